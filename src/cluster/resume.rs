//! A frontend that starts, or starts again (after a crash, on another host, with its backend
//! list in another order, shorter or longer), takes up the view the backends hold instead of
//! imposing one made from its command line. The cluster's membership is state kept by the
//! backends (on disk, with a data directory); the command line only says where to find them.
//!
//! Every listed backend is asked for its view (VIEW_GET). Of the views that name the backend
//! by the address it was asked at, the highest epoch wins; how it differs from the command line
//! is reported, and nothing changes on the backends. When no backend holds such a view, the
//! command line's list, in its order, is the view: at epoch 1 for a new cluster, or one above
//! every epoch held when backends hold views that name them by other addresses (they were
//! started again elsewhere), so that they take it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::peers::Peers;
use crate::protocol::{payload, Frame, Opcode, Status};
use crate::ring::View;

/// What a backend said when asked for its view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// It holds this view.
    View(View),
    /// It has no view (a new backend, or one whose data was lost).
    Nothing,
    /// It did not answer, or not with a view: why.
    Unanswered(String),
}

/// How long the others may still take once one backend has answered.
pub const GRACE: Duration = Duration::from_secs(2);

/// Asks every backend of `addrs` for its view, all at once, each again and again until it
/// answers or `timeout` has passed; once any backend has answered, the others get at most
/// [`GRACE`] more, so one dead backend does not hold up the start.
pub fn ask(peers: &Peers, addrs: &[String], timeout: Duration) -> Vec<Held> {
    let deadline = Mutex::new(Instant::now() + timeout);
    let deadline = &deadline;
    std::thread::scope(|scope| {
        let asks: Vec<_> = addrs
            .iter()
            .map(|addr| {
                scope.spawn(move || {
                    let mut pause = Duration::from_millis(20);
                    loop {
                        let answer = peers.call(
                            addr,
                            &Frame::request(Opcode::VIEW_GET, 0, Vec::new(), Vec::new()),
                        );
                        let held = match answer {
                            Ok(answer) if answer.status == Status::OK => {
                                match payload::decode_view(answer.epoch, &answer.value) {
                                    Ok(view) => Held::View(view),
                                    Err(e) => {
                                        Held::Unanswered(format!("its view does not decode: {e}"))
                                    }
                                }
                            }
                            Ok(answer) if answer.status == Status::NO_VIEW => Held::Nothing,
                            Ok(answer) => Held::Unanswered(format!(
                                "it answered {}: {}",
                                answer.status,
                                answer.message()
                            )),
                            Err(e) => {
                                let now = Instant::now();
                                let until = *lock(deadline);
                                if now >= until {
                                    return Held::Unanswered(e.to_string());
                                }
                                std::thread::sleep(pause.min(until - now));
                                pause = (pause * 2).min(Duration::from_millis(500));
                                continue;
                            }
                        };
                        let mut until = lock(deadline);
                        *until = (*until).min(Instant::now() + GRACE);
                        return held;
                    }
                })
            })
            .collect();
        asks.into_iter()
            .map(|ask| {
                ask.join()
                    .unwrap_or_else(|_| Held::Unanswered("the question failed".into()))
            })
            .collect()
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Where a frontend starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// The backends' view, and every way it differs from the command line, in words.
    Resume(View, Vec<String>),
    /// The command line's view, at this epoch, and why (empty for a new cluster).
    Fresh(View, Vec<String>),
}

/// The view to start from, given what the backends at `addrs` (the command line's list, which
/// `configured` describes) hold; the command line's copies per key count only if
/// `replicas_given`.
pub fn choose(configured: &View, replicas_given: bool, addrs: &[String], held: &[Held]) -> Start {
    let pairs: Vec<(&String, &Held)> = addrs.iter().zip(held).collect();
    let consistent: Vec<Held> = pairs
        .iter()
        .filter(|(addr, held)| matches!(held, Held::View(view) if view.nodes.contains(addr)))
        .map(|(_, held)| (*held).clone())
        .collect();
    if let Some((view, differences)) = differences(configured, replicas_given, &consistent) {
        return Start::Resume(view, differences);
    }
    let mut fresh = configured.clone();
    let mut moved = Vec::new();
    for (addr, held) in &pairs {
        if let Held::View(view) = held {
            fresh.epoch = fresh.epoch.max(view.epoch.saturating_add(1));
            moved.push((addr.to_string(), view.epoch));
        }
    }
    let why = moved
        .into_iter()
        .map(|(addr, epoch)| {
            format!(
                "{addr} holds view epoch {epoch}, where it is not listed under this address (it \
                 was started again elsewhere?); starting the command line's view at epoch {}",
                fresh.epoch
            )
        })
        .collect();
    Start::Fresh(fresh, why)
}

/// The view with the highest epoch among `held`, with every way it differs from `configured`
/// in words; `None` when none holds a view.
fn differences(
    configured: &View,
    replicas_given: bool,
    held: &[Held],
) -> Option<(View, Vec<String>)> {
    let best = held
        .iter()
        .filter_map(|h| match h {
            Held::View(view) => Some(view),
            _ => None,
        })
        .max_by_key(|view| view.epoch)?;
    let mut differences = Vec::new();
    let epoch = best.epoch;
    for addr in &best.nodes {
        if !configured.nodes.contains(addr) {
            differences.push(format!(
                "{addr} is a member of the cluster (view epoch {epoch}) but not on the command line; \
                 it stays a member"
            ));
        }
    }
    for addr in &configured.nodes {
        if !best.nodes.contains(addr) {
            differences.push(format!(
                "{addr} is on the command line but not a member of the cluster (view epoch \
                 {epoch}); it is left out"
            ));
        }
    }
    let common = |nodes: &[String], other: &[String]| -> Vec<String> {
        nodes
            .iter()
            .filter(|n| other.contains(n))
            .cloned()
            .collect()
    };
    if differences.is_empty()
        && common(&configured.nodes, &best.nodes) != common(&best.nodes, &configured.nodes)
    {
        differences.push(format!(
            "the command line lists the members in another order; the cluster's order (view \
             epoch {epoch}), which places the keys, is kept: {}",
            best.nodes.join(" ")
        ));
    }
    if replicas_given && best.replicas != configured.replicas {
        differences.push(format!(
            "the cluster keeps {} copies of every key (view epoch {epoch}), not {}",
            best.replicas, configured.replicas
        ));
    }
    if best.routing != configured.routing || best.placement != configured.placement {
        differences.push(format!(
            "the cluster routes {:?} with placement {:?} (view epoch {epoch}), not {:?} with {:?}",
            best.routing, best.placement, configured.routing, configured.placement
        ));
    }
    for h in held {
        if let Held::View(view) = h {
            if view.epoch == epoch && view != best {
                differences.push(format!(
                    "two backends hold different views of epoch {epoch}; the first is kept"
                ));
                break;
            }
        }
    }
    Some((best.clone(), differences))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{NodeState, Placement, Routing};

    fn view(epoch: u64, nodes: &[&str], replicas: usize) -> View {
        View::new(
            epoch,
            Routing::Direct,
            Placement::Partitions { count: 64 },
            replicas,
            nodes.iter().map(|n| n.to_string()).collect(),
        )
    }

    fn addrs(nodes: &[&str]) -> Vec<String> {
        nodes.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn no_view_held_means_the_command_line_starts_the_cluster() {
        let configured = view(1, &["a:1", "b:1"], 2);
        let held = [Held::Nothing, Held::Unanswered("refused".into())];
        let start = choose(&configured, true, &addrs(&["a:1", "b:1"]), &held);
        assert_eq!(start, Start::Fresh(configured, Vec::new()));
    }

    #[test]
    fn a_backend_started_again_elsewhere_gets_the_command_lines_view_above_its_epoch() {
        let configured = view(1, &["a:2"], 1);
        let held = [Held::View(view(4, &["a:1"], 1))];
        let Start::Fresh(fresh, why) = choose(&configured, true, &addrs(&["a:2"]), &held) else {
            panic!("a view that does not name its holder was taken up");
        };
        assert_eq!(
            (fresh.epoch, fresh.nodes.clone()),
            (5, vec!["a:2".to_string()])
        );
        assert!(why[0].contains("epoch 5"), "{why:?}");
    }

    #[test]
    fn the_highest_epoch_wins_and_every_difference_is_reported() {
        let configured = view(1, &["c:1", "b:1", "d:1"], 3);
        let mut newest = view(7, &["a:1", "b:1", "c:1"], 2);
        newest.states[0] = NodeState::Down;
        let held = [
            Held::View(view(5, &["a:1", "b:1", "c:1"], 2)),
            Held::View(newest.clone()),
            Held::Nothing,
        ];
        let asked = addrs(&["b:1", "c:1", "d:1"]);
        let Start::Resume(chosen, differences) = choose(&configured, true, &asked, &held) else {
            panic!("not resumed");
        };
        assert_eq!(chosen, newest);
        let text = differences.join("\n");
        assert!(text.contains("a:1 is a member"), "{text}");
        assert!(
            text.contains("d:1 is on the command line but not a member"),
            "{text}"
        );
        assert!(text.contains("keeps 2 copies"), "{text}");
    }

    #[test]
    fn the_same_members_in_another_order_keep_the_clusters_order() {
        let configured = view(1, &["c:1", "a:1", "b:1"], 3);
        let held = [Held::View(view(3, &["a:1", "b:1", "c:1"], 3))];
        let asked = addrs(&["c:1", "a:1", "b:1"]);
        let Start::Resume(chosen, differences) = choose(&configured, true, &asked, &held) else {
            panic!("not resumed");
        };
        assert_eq!(chosen.nodes, ["a:1", "b:1", "c:1"]);
        assert_eq!(differences.len(), 1, "{differences:?}");
        assert!(differences[0].contains("another order"));
        let same = view(1, &["a:1", "b:1", "c:1"], 3);
        let asked = addrs(&["a:1", "b:1", "c:1"]);
        let start = choose(&same, true, &asked, &held);
        assert!(matches!(start, Start::Resume(_, d) if d.is_empty()));
    }
}
