//! `kvcli top` driven as a user drives it: against `ringkv` processes, its tables read from a
//! pipe (`--once`, `--count`) and from a pseudo-terminal (redrawn in place, ended by Ctrl-C).

mod common;

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::process::{local_cluster, run_bounded, wait_bounded, ChildGuard, Finished};
use common::BOUND;
use common::{number, table_row as row};

const KVCLI: &str = env!("CARGO_BIN_EXE_kvcli");

/// `kvcli --frontend ADDR args...`, waited for at most [`BOUND`].
fn kvcli_at(addr: &str, args: &[&str]) -> Finished {
    let mut command = Command::new(KVCLI);
    command.args(["--frontend", addr]).args(args);
    run_bounded(&mut command, b"", BOUND)
}

/// A p99 cell: `-` (no latency counters, or no request), or a bucket bound such as `<=250us`.
fn is_p99(cell: &str) -> bool {
    cell == "-" || cell.starts_with("<=") || cell.starts_with('>')
}

/// PUTs through the frontend at `addr` on another thread until the returned flag is set.
fn keep_writing(addr: &str) -> (Arc<AtomicBool>, std::thread::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut client = ringkv::Client::connect(addr).unwrap();
    let stopped = Arc::clone(&stop);
    let writer = std::thread::spawn(move || {
        let mut written = 0u64;
        while !stopped.load(Ordering::Relaxed) {
            client
                .put(format!("top-{}", written % 500).as_bytes(), b"some value")
                .unwrap();
            written += 1;
        }
        written
    });
    (stop, writer)
}

#[test]
fn top_once_prints_one_table_of_every_backend_and_the_total() {
    let (_server, frontend, backends) = local_cluster();
    let (stop, writer) = keep_writing(&frontend);
    let out = kvcli_at(&frontend, &["top", "--once", "--interval", "0.5"]);
    stop.store(true, Ordering::Relaxed);
    assert!(writer.join().unwrap() > 0, "the writer wrote nothing");
    assert_eq!(out.code(), Some(0), "{out:?}");
    let text = out.text();
    assert!(!text.contains('\x1b'), "no terminal, no escapes: {out:?}");
    assert!(
        text.starts_with(&format!("kvcli top: {frontend}: the last 0.5")),
        "{out:?}"
    );
    let header = row(&text, "node");
    assert_eq!(
        header,
        ["node", "ops/s", "keys", "bytes", "errors", "p99"],
        "{out:?}"
    );
    let rows: Vec<Vec<&str>> = backends.iter().map(|b| row(&text, b)).collect();
    let total = row(&text, "total");
    for columns in rows.iter().chain([&total]) {
        assert_eq!(columns.len(), 6, "{out:?}");
        assert!(is_p99(columns[5]), "{out:?}");
        assert_eq!(number::<f64>(columns[4]), 0.0, "no errors: {out:?}");
    }
    // The writer kept every backend busy: each is a member of every chain of three.
    for columns in &rows {
        assert!(number::<f64>(columns[1]) > 0.0, "{out:?}");
    }
    let sum = |column: usize| rows.iter().map(|r| number::<f64>(r[column])).sum::<f64>();
    // Rates are printed to a tenth each: the total may differ from the sum by rounding.
    assert!(
        (sum(1) - number::<f64>(total[1])).abs() <= 0.1 * rows.len() as f64,
        "{out:?}"
    );
    assert_eq!(sum(2), number::<f64>(total[2]), "{out:?}");
    assert_eq!(sum(3), number::<f64>(total[3]), "{out:?}");
    assert!(
        number::<f64>(total[2]) > 0.0,
        "the keys written are counted: {out:?}"
    );
    // Two samples half a second apart, and nothing more.
    assert!(out.elapsed >= Duration::from_millis(500), "{out:?}");
    assert!(out.elapsed < Duration::from_secs(5), "{out:?}");
}

#[test]
fn top_without_a_terminal_prints_count_tables_separated_by_a_blank_line() {
    let (_server, frontend, backends) = local_cluster();
    let out = kvcli_at(&frontend, &["top", "--count", "3", "--interval", "0.2"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let text = out.text();
    assert!(!text.contains('\x1b'), "{out:?}");
    let tables: Vec<&str> = text.split("\n\n").collect();
    assert_eq!(tables.len(), 3, "{out:?}");
    for table in tables {
        assert!(table.starts_with("kvcli top: "), "{out:?}");
        for backend in &backends {
            assert_eq!(row(table, backend).len(), 6, "{out:?}");
        }
        assert_eq!(row(table, "total").len(), 6, "{out:?}");
    }
    assert!(out.elapsed >= Duration::from_millis(600), "{out:?}");
}

#[test]
fn top_refuses_a_bad_interval_and_once_with_count() {
    for args in [
        &["top", "--interval", "0"][..],
        &["top", "--interval", "-1"],
        &["top", "--once", "--count", "2"],
        &["top", "--count", "0"],
    ] {
        // Refused before connecting: no server is needed.
        let out = kvcli_at("127.0.0.1:1", args);
        assert_eq!(out.code(), Some(2), "{args:?}: {out:?}");
        assert!(
            out.stderr.contains("--interval") || out.stderr.contains("--count"),
            "{args:?}: {out:?}"
        );
    }
}

#[test]
fn top_exits_2_naming_a_backend_that_does_not_answer() {
    let cluster = common::process::TwoBackends::start();
    let [_first, second] = cluster.backends;
    let (backends, addr) = (cluster.backend_addrs, cluster.addr);
    let _frontend = cluster.frontend;
    let out = kvcli_at(&addr, &["top", "--once", "--interval", "0.2"]);
    assert_eq!(out.code(), Some(0), "{out:?}");

    second.kill();
    let out = kvcli_at(&addr, &["top", "--once", "--interval", "0.2"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    let text = out.text();
    // The table is still printed: the live backend with its figures, the dead one with why.
    assert_eq!(row(&text, &backends[0]).len(), 6, "{out:?}");
    assert_eq!(row(&text, &backends[1])[1], "UNAVAILABLE:", "{out:?}");
    assert!(text.contains("note: 1 node(s) did not answer"), "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "kvcli: node {} did not answer: UNAVAILABLE",
            backends[1]
        )),
        "{out:?}"
    );
}

/// A pseudo-terminal: the side a program reads and writes as its terminal, and the side that
/// sees what it writes.
fn pseudo_terminal() -> (OwnedFd, OwnedFd) {
    let (mut controller, mut terminal) = (-1, -1);
    // SAFETY: openpty writes the two descriptors it opens into the two ints, and reads none of
    // the null name, settings and window size.
    let opened = unsafe {
        libc::openpty(
            &mut controller,
            &mut terminal,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    assert_eq!(opened, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened by openpty and belong to nobody else.
    unsafe {
        (
            OwnedFd::from_raw_fd(controller),
            OwnedFd::from_raw_fd(terminal),
        )
    }
}

#[test]
fn top_in_a_terminal_redraws_in_place_and_exits_0_on_ctrl_c() {
    let (_server, frontend, backends) = local_cluster();
    let (controller, terminal) = pseudo_terminal();
    let mut child = {
        let mut command = Command::new(KVCLI);
        command
            .args(["--frontend", &frontend, "top", "--interval", "0.2"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(terminal))
            .stderr(Stdio::piped());
        // The command (and with it this process's copy of the terminal side) is dropped here,
        // so that the controller side reads an end once kvcli exits.
        ChildGuard(command.spawn().unwrap())
    };
    let (chunks, received) = mpsc::channel();
    std::thread::spawn(move || {
        let mut controller = std::fs::File::from(controller);
        let mut chunk = [0u8; 4096];
        // Linux answers EIO, not 0, once the last terminal side is closed.
        while let Ok(n @ 1..) = controller.read(&mut chunk) {
            if chunks.send(chunk[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut screen = Vec::new();
    let draws = |screen: &[u8]| screen.windows(3).filter(|w| w == b"\x1b[H").count();
    let deadline = Instant::now() + BOUND;
    // The heading, then at least two tables drawn over each other.
    while draws(&screen) < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(chunk) => screen.extend_from_slice(&chunk),
            Err(_) => panic!(
                "no second table within {BOUND:?}:\n{}",
                String::from_utf8_lossy(&screen)
            ),
        }
    }
    // SAFETY: kill only sends a signal to the child we started, which is still running.
    let sent = unsafe { libc::kill(child.0.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(sent, 0, "kill: {}", std::io::Error::last_os_error());
    let status = wait_bounded(&mut child.0, BOUND).expect("kvcli top did not exit on Ctrl-C");
    let mut stderr = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{status}: {stderr}");
    while let Ok(chunk) = received.recv_timeout(Duration::from_secs(1)) {
        screen.extend_from_slice(&chunk);
    }
    let text = String::from_utf8_lossy(&screen);
    assert!(
        text.starts_with("\x1b[?25l"),
        "the cursor is hidden: {text:?}"
    );
    assert!(
        text.ends_with("\x1b[?25h"),
        "and shown again at the end: {text:?}"
    );
    assert!(text.contains("(Ctrl-C quits)"), "{text:?}");
    let last_table = text.rsplit("\x1b[H").next().unwrap();
    for node in backends.iter().map(String::as_str).chain(["total"]) {
        assert!(
            last_table.lines().any(|line| line.starts_with(node)),
            "{node} is missing from the last table: {text:?}"
        );
    }
}
