//! The ring: positions, views, ownership and routing.
//!
//! Positions are full 160-bit SHA-1 digests compared as big-endian unsigned integers. A node sits
//! at the digest of its address (and, with virtual nodes, at more digests derived from it). The one
//! ownership rule, from the paper: **a point owns the span from its own position up to, but not
//! including, the next point clockwise**; a key position below every point belongs to the last
//! point (the span wraps around zero). [`Ring::owner`] is the only implementation of that rule.

use std::collections::HashSet;
use std::fmt;

use crate::error::{Error, Result};

/// A place on the ring: a SHA-1 digest read as a big-endian 160-bit number.
pub type Position = [u8; 20];

/// The position of a key.
pub fn key_position(key: &[u8]) -> Position {
    sha1_smol::Sha1::from(key).digest().bytes()
}

/// The position of a node's `vnode`-th point: the digest of its address for point 0 (the
/// paper's placement), of `ADDRESS#i` for point `i > 0`.
pub fn node_position(addr: &str, vnode: u16) -> Position {
    if vnode == 0 {
        sha1_smol::Sha1::from(addr.as_bytes()).digest().bytes()
    } else {
        sha1_smol::Sha1::from(format!("{addr}#{vnode}").as_bytes())
            .digest()
            .bytes()
    }
}

/// Position printed as 40 hex digits.
pub fn position_hex(position: &Position) -> String {
    position.iter().map(|b| format!("{b:02x}")).collect()
}

/// How a backend that does not own a key picks the next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// The paper: relay to the next node clockwise (O(N) relays).
    Successor = 0,
    /// Chord: relay to the closest finger preceding the key (O(log N) relays).
    Finger = 1,
    /// Every node knows every node: relay straight to the owner (at most one relay).
    Direct = 2,
}

impl Routing {
    /// The routing mode numbered `byte` on the wire.
    pub fn from_u8(byte: u8) -> Option<Routing> {
        match byte {
            0 => Some(Routing::Successor),
            1 => Some(Routing::Finger),
            2 => Some(Routing::Direct),
            _ => None,
        }
    }
}

impl fmt::Display for Routing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Routing::Successor => "successor",
            Routing::Finger => "finger",
            Routing::Direct => "direct",
        })
    }
}

impl std::str::FromStr for Routing {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Routing, String> {
        match s {
            "successor" => Ok(Routing::Successor),
            "finger" => Ok(Routing::Finger),
            "direct" => Ok(Routing::Direct),
            _ => Err(format!(
                "unknown routing mode {s:?} (expected successor, finger or direct)"
            )),
        }
    }
}

/// Where nodes sit on the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Each node at `per_node` hashed positions: the digest of its address, then of `ADDRESS#i`
    /// (1: the paper).
    Hashed {
        /// Positions per node, at least 1.
        per_node: u16,
    },
    /// The ring cut into `count` equal partitions (a power of two, at least the number of nodes),
    /// dealt to the nodes so that every node holds `count / N` of them, rounded down or up. The
    /// deal depends only on the ordered node list, and appending a node moves only the
    /// partitions it takes: `count / (N + 1)` of them.
    Partitions {
        /// Number of partitions, a power of two from 1 to [`MAX_PARTITIONS`].
        count: u32,
    },
}

/// The most partitions a ring may be cut into.
pub const MAX_PARTITIONS: u32 = 1 << 16;

/// The most nodes a view may list. A view comes from the network, so what building its ring
/// costs (memory, and time to deal the partitions) must have a bound.
pub const MAX_NODES: usize = 4096;

/// The most hashed positions a ring may hold, over all its nodes.
pub const MAX_POINTS: usize = 1 << 20;

/// The placement `ringkv` uses unless told otherwise: chosen by `cargo bench --bench ring`,
/// where it gives the most even load and moves the fewest keys when a node joins.
pub const DEFAULT_PLACEMENT: Placement = Placement::Partitions { count: 4096 };

impl Placement {
    /// The number `placement_kind` on the wire: 0 hashed, 1 partitions.
    pub fn kind(&self) -> u8 {
        match self {
            Placement::Hashed { .. } => 0,
            Placement::Partitions { .. } => 1,
        }
    }

    /// The number that goes with the kind on the wire: positions per node, or partitions.
    pub fn parameter(&self) -> u32 {
        match *self {
            Placement::Hashed { per_node } => u32::from(per_node),
            Placement::Partitions { count } => count,
        }
    }

    /// The placement numbered `kind` with `parameter`, as on the wire.
    pub fn from_wire(kind: u8, parameter: u32) -> Option<Placement> {
        match kind {
            0 => u16::try_from(parameter)
                .ok()
                .map(|per_node| Placement::Hashed { per_node }),
            1 => Some(Placement::Partitions { count: parameter }),
            _ => None,
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placement::Hashed { per_node: 1 } => f.write_str("1 hashed position per node"),
            Placement::Hashed { per_node } => write!(f, "{per_node} hashed positions per node"),
            Placement::Partitions { count } => write!(f, "{count} equal partitions"),
        }
    }
}

/// The most copies of a key a view may ask for.
pub const MAX_REPLICAS: usize = 16;

/// Whether a node of the view takes part in its chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// Serving: a member of every chain its place on the ring puts it in.
    Up = 0,
    /// Declared dead or hung by the view keeper: it keeps its place on the ring (so no
    /// partition moves), but no chain counts it, so it can neither serve nor acknowledge.
    Down = 1,
    /// Back after being down, and being copied up to date from the chains' members
    /// ([`crate::cluster::transfer`]): still in no chain, so it serves nothing yet.
    Syncing = 2,
}

impl NodeState {
    /// The state numbered `byte` on the wire.
    pub fn from_u8(byte: u8) -> Option<NodeState> {
        match byte {
            0 => Some(NodeState::Up),
            1 => Some(NodeState::Down),
            2 => Some(NodeState::Syncing),
            _ => None,
        }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeState::Up => "up",
            NodeState::Down => "down",
            NodeState::Syncing => "syncing",
        })
    }
}

/// The member list every node agrees on, numbered by an epoch.
#[derive(Clone, PartialEq, Eq)]
pub struct View {
    /// Increases with every change of membership; requests carry it.
    pub epoch: u64,
    /// How backends relay keys they do not own.
    pub routing: Routing,
    /// Where the nodes sit on the ring.
    pub placement: Placement,
    /// Copies kept of every key: the length of a chain when all its nodes are up.
    pub replicas: usize,
    /// Backend addresses, as clients of the backends reach them, in the order they joined.
    pub nodes: Vec<String>,
    /// Each node's state, indexed like `nodes`.
    pub states: Vec<NodeState>,
    /// Per node, indexed like `nodes`: for a node that is up, the epoch in which it (last)
    /// became up, which orders chains (see [`Ring::chain`]); for a node that is down or syncing,
    /// the epoch in which it last stopped being up, which tells the keeper which member of a
    /// chain left it last. 0 for a node up since the first view.
    pub since: Vec<u64>,
    /// With partition placement, the owner of each partition, as an index into `nodes`: the
    /// placement is state, changed only by joins and leaves ([`join_owners`], [`leave_owners`]).
    /// Empty means the deal of the node list ([`deal_owners`]), as views made before the table
    /// was kept; a [`Ring`]'s view always has it filled in. Empty with hashed placement.
    pub owners: Vec<u16>,
    /// While partitions move (a join or a leave under way): the owners they move to, like
    /// `owners`; empty otherwise. Chains still follow `owners`; the nodes that will be in a
    /// partition's chain under `target` and are not now copy it ([`crate::cluster::handoff`]).
    pub target: Vec<u16>,
}

/// The owner tables are summarised (per node, how many partitions it owns), not listed.
impl fmt::Debug for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = |table: &[u16]| -> Vec<usize> {
            (0..self.nodes.len())
                .map(|n| table.iter().filter(|&&o| usize::from(o) == n).count())
                .collect()
        };
        f.debug_struct("View")
            .field("epoch", &self.epoch)
            .field("routing", &self.routing)
            .field("placement", &self.placement)
            .field("replicas", &self.replicas)
            .field("nodes", &self.nodes)
            .field("states", &self.states)
            .field("since", &self.since)
            .field("partitions_owned", &held(&self.owners))
            .field("partitions_in_target", &held(&self.target))
            .finish()
    }
}

impl View {
    /// A view of `nodes`, all up, keeping `replicas` copies of every key.
    pub fn new(
        epoch: u64,
        routing: Routing,
        placement: Placement,
        replicas: usize,
        nodes: Vec<String>,
    ) -> View {
        let owners = match placement {
            Placement::Partitions { count } if count as usize >= nodes.len() => {
                deal_owners(&nodes, count)
            }
            _ => Vec::new(),
        };
        View {
            epoch,
            routing,
            placement,
            replicas,
            states: vec![NodeState::Up; nodes.len()],
            since: vec![0; nodes.len()],
            nodes,
            owners,
            target: Vec::new(),
        }
    }

    /// Whether partitions are moving: a join or a leave is under way.
    pub fn is_moving(&self) -> bool {
        !self.target.is_empty()
    }

    /// The nodes that own at least one partition (or point): the members, as against a node
    /// that is joining and owns nothing yet, or has left.
    pub fn owning(&self) -> Vec<bool> {
        let mut owning = vec![self.owners.is_empty(); self.nodes.len()];
        for &owner in &self.owners {
            if let Some(o) = owning.get_mut(usize::from(owner)) {
                *o = true;
            }
        }
        owning
    }

    /// The view a finished move leaves: `target` become the owners.
    pub fn moved(&self) -> View {
        let mut view = self.clone();
        if view.is_moving() {
            view.owners = std::mem::take(&mut view.target);
        }
        view
    }

    /// Whether node `index` takes part in chains.
    pub fn is_up(&self, index: usize) -> bool {
        self.states.get(index) == Some(&NodeState::Up)
    }

    /// This view with the same membership under another epoch (for comparing contents).
    pub fn with_epoch(&self, epoch: u64) -> View {
        View {
            epoch,
            ..self.clone()
        }
    }
}

/// The replication factor used when none is given: three copies, or one per node when there
/// are fewer nodes.
pub fn default_replicas(nodes: usize) -> usize {
    nodes.clamp(1, 3)
}

/// The nodes that hold a key, in chain order: writes enter at the head (the first) and are
/// applied down to the tail (the last), which answers reads. At most [`MAX_REPLICAS`] long; empty
/// when every node of the key's chain is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chain {
    members: [u32; MAX_REPLICAS],
    len: u8,
}

impl Chain {
    /// The members, head first, as indexes into the view's nodes.
    pub fn members(&self) -> impl Iterator<Item = usize> + '_ {
        self.members[..usize::from(self.len)]
            .iter()
            .map(|&m| m as usize)
    }

    /// Number of members that are up.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// True when no member is up: the key is unavailable.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where writes enter.
    pub fn head(&self) -> Option<usize> {
        self.members().next()
    }

    /// Where reads are answered and writes are acknowledged.
    pub fn tail(&self) -> Option<usize> {
        self.members().last()
    }

    /// The member after `node`, `None` when `node` is the tail or not a member.
    pub fn successor(&self, node: usize) -> Option<usize> {
        let at = self.position(node)?;
        self.members().nth(at + 1)
    }

    /// Where `node` stands in the chain (0 = head).
    pub fn position(&self, node: usize) -> Option<usize> {
        self.members().position(|m| m == node)
    }
}

/// A view with its points sorted, ready to answer "who owns this" and "where next".
#[derive(Debug, Clone)]
pub struct Ring {
    view: View,
    /// Every point of every node, sorted by position; the `u32` indexes `view.nodes`.
    points: Vec<(Position, u32)>,
    /// The first 64 bits of each point's position, for a fast search.
    heads: Vec<u64>,
    /// For each node, the indexes into `points` of its points, ascending.
    points_of_node: Vec<Vec<u32>>,
    /// For each point, in runs of `chain_len`, the nodes of its chain when every node is up:
    /// its own node, then the next nodes ([`list_order_chains`] or [`clockwise_chains`]).
    natural_chains: Vec<u32>,
    /// For each point, the chain itself (see [`Ring::chain`]), worked out once per view.
    chains: Vec<Chain>,
    /// `min(replicas, nodes)`.
    chain_len: usize,
    /// With equal partitions, the bits of a position that number its partition: the point
    /// holding a position is then read off it, not searched for.
    partition_bits: Option<u32>,
}

impl Ring {
    /// Builds the ring of a view. Fails on an empty view, duplicate addresses, zero positions
    /// per node, or a partition count that is not a power of two at least the number of nodes.
    pub fn new(mut view: View) -> Result<Ring> {
        if matches!(view.placement, Placement::Hashed { .. })
            && !(view.owners.is_empty() && view.target.is_empty())
        {
            return Err(Error::View(
                "an owner table goes only with partition placement".into(),
            ));
        }
        if view.nodes.is_empty() {
            return Err(Error::View("a view needs at least one node".into()));
        }
        if view.nodes.len() > MAX_NODES {
            return Err(Error::View(format!(
                "{} nodes: a view holds at most {MAX_NODES}",
                view.nodes.len()
            )));
        }
        if view.replicas == 0 || view.replicas > MAX_REPLICAS {
            return Err(Error::View(format!(
                "{} replicas: a view keeps from 1 to {MAX_REPLICAS} copies of a key",
                view.replicas
            )));
        }
        if view.states.len() != view.nodes.len() || view.since.len() != view.nodes.len() {
            return Err(Error::View(format!(
                "{} node states and {} epochs for {} nodes",
                view.states.len(),
                view.since.len(),
                view.nodes.len()
            )));
        }
        let mut seen = HashSet::new();
        for node in &view.nodes {
            if !seen.insert(node.as_str()) {
                return Err(Error::View(format!("node {node} is listed twice")));
            }
        }
        let mut points = match view.placement {
            Placement::Hashed { per_node } => {
                if per_node == 0 {
                    return Err(Error::View("a node needs at least one position".into()));
                }
                if view.nodes.len() * usize::from(per_node) > MAX_POINTS {
                    return Err(Error::View(format!(
                        "{} nodes at {per_node} positions each: a ring holds at most {MAX_POINTS} points",
                        view.nodes.len()
                    )));
                }
                let mut points = Vec::with_capacity(view.nodes.len() * usize::from(per_node));
                for (index, node) in view.nodes.iter().enumerate() {
                    for vnode in 0..per_node {
                        points.push((node_position(node, vnode), index as u32));
                    }
                }
                points
            }
            Placement::Partitions { count } => {
                if !count.is_power_of_two() || count > MAX_PARTITIONS {
                    return Err(Error::View(format!(
                        "{count} partitions: the count must be a power of two from 1 to {MAX_PARTITIONS}"
                    )));
                }
                if view.owners.is_empty() {
                    if (count as usize) < view.nodes.len() {
                        return Err(Error::View(format!(
                            "{count} partitions cannot be shared by {} nodes",
                            view.nodes.len()
                        )));
                    }
                    view.owners = deal_owners(&view.nodes, count);
                }
                for (what, table) in [("owner", &view.owners), ("target", &view.target)] {
                    if table.is_empty() && what == "target" {
                        continue;
                    }
                    if table.len() != count as usize {
                        return Err(Error::View(format!(
                            "{} {what} entries for {count} partitions",
                            table.len()
                        )));
                    }
                    if let Some(bad) = table.iter().find(|&&o| usize::from(o) >= view.nodes.len()) {
                        return Err(Error::View(format!(
                            "{what} table names node {bad} of {}",
                            view.nodes.len()
                        )));
                    }
                }
                view.owners
                    .iter()
                    .enumerate()
                    .map(|(partition, &node)| {
                        (partition_start(partition as u32, count), u32::from(node))
                    })
                    .collect()
            }
        };
        points.sort_unstable();
        // Two points at one position would make ownership depend on sort order; with SHA-1 it
        // takes a collision, but a view must never be ambiguous.
        points.dedup_by(|next, prev| next.0 == prev.0);
        let mut points_of_node = vec![Vec::new(); view.nodes.len()];
        for (index, (_, node)) in points.iter().enumerate() {
            points_of_node[*node as usize].push(index as u32);
        }
        let heads: Vec<u64> = points.iter().map(|(p, _)| position_head(p)).collect();
        let partition_bits = match view.placement {
            Placement::Partitions { count }
                if points.len() == count as usize
                    && points
                        .iter()
                        .enumerate()
                        .all(|(i, (p, _))| *p == partition_start(i as u32, count)) =>
            {
                Some(count.trailing_zeros())
            }
            _ => None,
        };
        let placed = points_of_node.iter().filter(|p| !p.is_empty()).count();
        let chain_len = view.replicas.min(placed);
        let natural_chains = match view.placement {
            Placement::Partitions { .. } => list_order_chains(&points, &points_of_node, chain_len),
            Placement::Hashed { .. } => clockwise_chains(&points, chain_len),
        };
        let chains = (0..points.len())
            .map(|point| effective_chain(&view, &natural_chains[point * chain_len..][..chain_len]))
            .collect();
        Ok(Ring {
            view,
            points,
            heads,
            points_of_node,
            natural_chains,
            chains,
            chain_len,
            partition_bits,
        })
    }

    /// The chain of the key at `position`: **the owner of the position and the next
    /// `replicas - 1` nodes, leaving out the nodes that are not up, in the order they became up
    /// (by `since`; nodes up equally long keep their natural order)**. With equal partitions the
    /// next nodes are those after the owner in the node list that own partitions; with hashed
    /// points, the next distinct nodes clockwise from the owner's point. The nodes keep their
    /// places, so a chain only shrinks while a node is down and no key moves; a node that comes
    /// back joins its chains at the tail, where a copy of the tail's data is all it needs. The one implementation of the chain rule.
    pub fn chain(&self, position: &Position) -> Chain {
        self.chain_at(self.point_of(position))
    }

    /// The chain of the span of point `point` (an index into [`points`](Ring::points)).
    pub fn chain_at(&self, point: usize) -> Chain {
        self.chains[point]
    }

    /// The nodes whose places on the ring put them in the chain of point `point`, up or not,
    /// in chain order from the point's own node.
    pub fn natural_members(&self, point: usize) -> impl Iterator<Item = usize> + '_ {
        self.natural_chains[point * self.chain_len..][..self.chain_len]
            .iter()
            .map(|&m| m as usize)
    }

    /// The index of the point whose span holds `position`.
    pub fn point_index(&self, position: &Position) -> usize {
        self.point_of(position)
    }

    /// The chain of `key`.
    pub fn chain_of_key(&self, key: &[u8]) -> Chain {
        self.chain(&key_position(key))
    }

    /// The view this ring was built from.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.view.nodes.len()
    }

    /// Always false: a ring has at least one node.
    pub fn is_empty(&self) -> bool {
        self.view.nodes.is_empty()
    }

    /// The address of node `index`.
    pub fn node(&self, index: usize) -> &str {
        &self.view.nodes[index]
    }

    /// The index of the node with address `addr`.
    pub fn index_of(&self, addr: &str) -> Option<usize> {
        self.view.nodes.iter().position(|n| n == addr)
    }

    /// The sorted points: (position, node index).
    pub fn points(&self) -> impl Iterator<Item = (&Position, usize)> {
        self.points.iter().map(|(p, i)| (p, *i as usize))
    }

    /// Index into `points` of the point whose span holds `position`: the last point at or
    /// before it, or the last point of all when `position` is below every point.
    fn point_of(&self, position: &Position) -> usize {
        let head = position_head(position);
        match self.partition_bits {
            Some(0) => return 0,
            Some(bits) => return (head >> (64 - bits)) as usize,
            None => {}
        }
        self.point_by_search(head, position)
    }

    /// [`point_of`](Ring::point_of) by a binary search of the points.
    fn point_by_search(&self, head: u64, position: &Position) -> usize {
        // The search runs on the positions' first 64 bits, which are plain integer compares;
        // only points sharing those bits with `position` need the full 160.
        let mut after = self.heads.partition_point(|&h| h <= head);
        while after > 0 && self.heads[after - 1] == head && self.points[after - 1].0 > *position {
            after -= 1;
        }
        match after {
            0 => self.points.len() - 1,
            after => after - 1,
        }
    }

    /// The node that owns `position` (the ownership rule in the module doc).
    pub fn owner(&self, position: &Position) -> usize {
        self.points[self.point_of(position)].1 as usize
    }

    /// The node that owns `key`.
    pub fn owner_of_key(&self, key: &[u8]) -> usize {
        self.owner(&key_position(key))
    }

    /// Index into `points` of `from`'s last point at or before `position`, walking
    /// counter-clockwise from the point that owns it; `None` if `from` has no point.
    fn nearest_point_of(&self, from: usize, position: &Position) -> Option<usize> {
        let own = self.points_of_node.get(from)?;
        let owner_point = self.point_of(position) as u32;
        match own.partition_point(|&i| i <= owner_point) {
            0 => own.last(),
            after => own.get(after - 1),
        }
        .map(|&i| i as usize)
    }

    /// Where node `from`, which does not own `position`, sends a request for it.
    ///
    /// All three modes start from `from`'s point nearest before `position` (counter-clockwise)
    /// and pick a point between it and the owner's point, so every relay strictly shortens the
    /// clockwise distance left and a request always arrives. `Successor`: the next point
    /// clockwise (the paper; with one point per node, `from`'s successor). `Finger`: Chord's
    /// closest preceding finger, the first point at or after `p + 2^i` for the largest `i` that
    /// does not pass the key, which at least halves the distance left. `Direct`: the owner.
    pub fn next_hop(&self, from: usize, position: &Position) -> usize {
        if self.view.routing == Routing::Direct {
            return self.owner(position);
        }
        // `from` is not on the ring (it is not in the view): the owner is as good as any.
        let Some(start) = self.nearest_point_of(from, position) else {
            return self.owner(position);
        };
        let n = self.points.len();
        match self.view.routing {
            Routing::Successor => self.points[(start + 1) % n].1 as usize,
            Routing::Direct => self.owner(position),
            Routing::Finger => {
                let from_position = &self.points[start].0;
                let left = sub_mod(position, from_position);
                for bit in (0..=highest_bit(&left).unwrap_or(0)).rev() {
                    let target = add_pow2(from_position, bit);
                    let finger = self.points.partition_point(|(p, _)| *p < target) % n;
                    // A finger that wrapped round to `p` itself is no progress.
                    if finger != start && sub_mod(&self.points[finger].0, from_position) <= left {
                        return self.points[finger].1 as usize;
                    }
                }
                self.points[(start + 1) % n].1 as usize
            }
        }
    }

    /// The most relays a request can take under this ring's routing before it reaches the
    /// owner. With successor and finger routing a node never sees the same request twice: the
    /// next hop's point lies after the sender's nearest point, and the sender has no point
    /// between that one and the key. So at most N - 1 relays.
    ///
    /// With chains longer than one node, or nodes down, one more relay may be needed: from the
    /// node reached by routing to the chain member that must handle the request.
    pub fn relay_bound(&self) -> usize {
        let to_member =
            usize::from(self.chain_len > 1 || self.view.states.iter().any(|s| *s != NodeState::Up));
        match self.view.routing {
            Routing::Direct => 1,
            Routing::Successor | Routing::Finger => self.len().saturating_sub(1).max(1) + to_member,
        }
    }

    /// Number of points on the ring.
    pub fn point_count(&self) -> usize {
        self.points.len()
    }

    /// The fraction of the key space each node owns, indexed like the view's nodes.
    pub fn shares(&self) -> Vec<f64> {
        let mut shares = vec![0.0; self.len()];
        let n = self.points.len();
        for i in 0..n {
            let start = position_to_f64(&self.points[i].0);
            let end = position_to_f64(&self.points[(i + 1) % n].0);
            let mut span = end - start;
            if span <= 0.0 {
                span += 1.0;
            }
            shares[self.points[i].1 as usize] += span;
        }
        shares
    }
}

/// The chain made of the members of `natural` that are up in `view`, in the order they became
/// up.
fn effective_chain(view: &View, natural: &[u32]) -> Chain {
    let mut chain = Chain {
        members: [0; MAX_REPLICAS],
        len: 0,
    };
    for &node in natural {
        if view.is_up(node as usize) {
            chain.members[usize::from(chain.len)] = node;
            chain.len += 1;
        }
    }
    // A stable sort: equal epochs keep the natural order.
    chain.members[..usize::from(chain.len)].sort_by_key(|&node| view.since[node as usize]);
    chain
}

/// For every point, its own node followed by the next `len - 1` nodes that hold points, in the
/// view's node order (wrapping round). With partitions dealt by hash, the nodes met clockwise
/// differ from partition to partition, so a node's chains would spread over every other node and
/// a batch of writes at a head would split into a frame per successor, and each of those again
/// at the middle; in node order all of a node's partitions share one chain. It also leaves N
/// sets of nodes holding a key together instead of nearly every set of `len`.
fn list_order_chains(
    points: &[(Position, u32)],
    points_of_node: &[Vec<u32>],
    len: usize,
) -> Vec<u32> {
    let placed: Vec<u32> = (0..points_of_node.len() as u32)
        .filter(|&n| !points_of_node[n as usize].is_empty())
        .collect();
    let mut rank = vec![0usize; points_of_node.len()];
    for (at, &node) in placed.iter().enumerate() {
        rank[node as usize] = at;
    }
    let mut chains = Vec::with_capacity(points.len() * len);
    for (_, node) in points {
        let at = rank[*node as usize];
        chains.extend((0..len).map(|step| placed[(at + step) % placed.len()]));
    }
    chains
}

/// For every point, the first `len` distinct nodes met walking clockwise from it (itself
/// first), flattened. A node's points may come in long runs, so each walk skips ahead by node
/// rather than revisiting: the walk from a point reuses the one from the point after it.
fn clockwise_chains(points: &[(Position, u32)], len: usize) -> Vec<u32> {
    let n = points.len();
    let mut chains = vec![0u32; n * len];
    if n == 0 || len == 0 {
        return chains;
    }
    // Walk once from the last point backwards (twice round, so every walk wraps): the chain of
    // point i is its own node followed by the chain of point i + 1 without that node.
    let mut next: Vec<u32> = Vec::with_capacity(len + 1);
    for step in (0..2 * n).rev() {
        let i = step % n;
        let node = points[i].1;
        let mut chain = Vec::with_capacity(len);
        chain.push(node);
        chain.extend(next.iter().copied().filter(|&m| m != node).take(len - 1));
        if step < n {
            chains[i * len..(i + 1) * len].copy_from_slice(&chain);
        }
        next = chain;
    }
    chains
}

/// The first 64 bits of a position, as a number: positions compare as their heads do, unless
/// the heads are equal.
fn position_head(position: &Position) -> u64 {
    let mut head = [0u8; 8];
    head.copy_from_slice(&position[..8]);
    u64::from_be_bytes(head)
}

/// A position as a fraction of the ring, in [0, 1).
pub fn position_to_f64(position: &Position) -> f64 {
    position
        .iter()
        .take(8)
        .rev()
        .fold(0.0, |acc, &b| (acc + f64::from(b)) / 256.0)
}

/// The first position of partition `partition` of `count` (a power of two): the partition
/// number in the top `log2(count)` bits.
pub fn partition_start(partition: u32, count: u32) -> Position {
    let bits = count.trailing_zeros();
    let mut position = [0u8; 20];
    if bits > 0 {
        let top = u64::from(partition) << (64 - bits);
        position[..8].copy_from_slice(&top.to_be_bytes());
    }
    position
}

/// The owner of every partition, by index into `nodes`: node 0 starts with all of them, and each
/// further node joins in list order as [`join_owners`] deals it in. Every node ends with
/// `count / N` rounded down or up, and appending a node to the list changes the owner of exactly
/// the partitions the new node takes.
pub fn deal_owners(nodes: &[String], count: u32) -> Vec<u16> {
    let mut owners = vec![0u16; count as usize];
    for (k, node) in nodes.iter().enumerate().skip(1) {
        owners = join_owners(&owners, k, node);
    }
    owners
}

/// `owners` with node `newcomer` (address `addr`, owning nothing yet) dealt in: with `m` nodes
/// owning partitions before, it takes `count / (m + 1)` of them, one at a time from whichever
/// node then holds the most (the lowest index on a tie), choosing among that node's partitions
/// by a hash of the partition and the newcomer's address. Only the partitions it takes move.
pub fn join_owners(owners: &[u16], newcomer: usize, addr: &str) -> Vec<u16> {
    let count = owners.len();
    let mut owners = owners.to_vec();
    let nodes = owners
        .iter()
        .map(|&o| usize::from(o) + 1)
        .max()
        .unwrap_or(0)
        .max(newcomer + 1);
    let mut held = vec![0usize; nodes];
    for &o in &owners {
        held[usize::from(o)] += 1;
    }
    let members = held.iter().filter(|&&h| h > 0).count();
    let mut gives = vec![0usize; nodes];
    for _ in 0..count / (members + 1) {
        let donor = (0..nodes)
            .filter(|&d| d != newcomer)
            .max_by_key(|&d| (held[d] - gives[d], std::cmp::Reverse(d)))
            .unwrap_or(0);
        gives[donor] += 1;
    }
    let seed = u64::from_be_bytes(node_position(addr, 0)[..8].try_into().unwrap_or([0; 8]));
    let mut by_donor: Vec<Vec<(u64, usize)>> = vec![Vec::new(); nodes];
    for (partition, &owner) in owners.iter().enumerate() {
        if gives[usize::from(owner)] > 0 {
            by_donor[usize::from(owner)].push((mix64(seed ^ partition as u64), partition));
        }
    }
    for (donor, mut candidates) in by_donor.into_iter().enumerate() {
        let take = gives[donor];
        if take == 0 {
            continue;
        }
        if take < candidates.len() {
            candidates.select_nth_unstable_by(take - 1, |a, b| b.cmp(a));
        }
        for &(_, partition) in &candidates[..take] {
            owners[partition] = newcomer as u16;
        }
    }
    owners
}

/// `owners` with node `leaving`'s partitions dealt out to the others that own partitions: in
/// ascending order, each to whichever of them then holds the fewest (the lowest index on a tie).
/// Only the leaving node's partitions move, and the others end within one partition of each
/// other if they were before. `None` if no other node owns a partition.
pub fn leave_owners(owners: &[u16], leaving: usize) -> Option<Vec<u16>> {
    let nodes = owners
        .iter()
        .map(|&o| usize::from(o) + 1)
        .max()
        .unwrap_or(0);
    let mut held = vec![0usize; nodes];
    for &o in owners {
        held[usize::from(o)] += 1;
    }
    let heirs: Vec<usize> = (0..nodes)
        .filter(|&n| n != leaving && held[n] > 0)
        .collect();
    if heirs.is_empty() {
        return None;
    }
    let mut owners = owners.to_vec();
    for owner in owners.iter_mut() {
        if usize::from(*owner) != leaving {
            continue;
        }
        let heir = *heirs
            .iter()
            .min_by_key(|&&n| (held[n], n))
            .unwrap_or(&heirs[0]);
        held[heir] += 1;
        *owner = heir as u16;
    }
    Some(owners)
}

/// A 64-bit mixing function (SplitMix64's finaliser): spreads nearby inputs far apart.
fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// `a - b` modulo 2^160: the clockwise distance from `b` to `a`.
fn sub_mod(a: &Position, b: &Position) -> Position {
    let mut out = [0u8; 20];
    let mut borrow = 0i16;
    for i in (0..20).rev() {
        let mut d = i16::from(a[i]) - i16::from(b[i]) - borrow;
        borrow = 0;
        if d < 0 {
            d += 256;
            borrow = 1;
        }
        out[i] = d as u8;
    }
    out
}

/// `a + 2^bit` modulo 2^160.
fn add_pow2(a: &Position, bit: u32) -> Position {
    let mut out = *a;
    let mut i = 19 - (bit / 8) as usize;
    let mut carry = 1u16 << (bit % 8);
    loop {
        let sum = u16::from(out[i]) + carry;
        out[i] = sum as u8;
        carry = sum >> 8;
        if carry == 0 || i == 0 {
            break;
        }
        i -= 1;
    }
    out
}

/// The index of the highest set bit (0 = least significant), `None` for zero.
fn highest_bit(a: &Position) -> Option<u32> {
    let first = a.iter().position(|&b| b != 0)?;
    Some((19 - first as u32) * 8 + (7 - a[first].leading_zeros()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn equal_partitions_are_read_off_the_position_as_the_search_finds_them() {
        let nodes: Vec<String> = (0..5).map(|i| format!("10.0.0.{i}:7001")).collect();
        for count in [1u32, 2, 64, 4096] {
            let view = View::new(
                1,
                Routing::Direct,
                Placement::Partitions { count },
                2,
                nodes.clone(),
            );
            let Ok(ring) = Ring::new(view) else {
                assert!((count as usize) < nodes.len());
                continue;
            };
            assert_eq!(ring.partition_bits, Some(count.trailing_zeros()));
            let mut positions: Vec<Position> = (0..2000u32)
                .map(|i| key_position(format!("key-{i}").as_bytes()))
                .collect();
            for p in 0..count {
                let start = partition_start(p, count);
                positions.push(start);
                let mut before = start;
                // The last position of the partition before.
                if let Some(i) = before.iter().rposition(|&b| b != 0) {
                    before[i] -= 1;
                    before[i + 1..].iter_mut().for_each(|b| *b = 0xff);
                    positions.push(before);
                }
            }
            positions.push([0xff; 20]);
            for position in &positions {
                let head = position_head(position);
                assert_eq!(
                    ring.point_of(position),
                    ring.point_by_search(head, position),
                    "{count} partitions, {position:?}"
                );
            }
        }
    }

    use super::*;

    fn view(nodes: &[&str], routing: Routing, vnodes: u16) -> View {
        View::new(
            1,
            routing,
            Placement::Hashed { per_node: vnodes },
            1,
            nodes.iter().map(|s| s.to_string()).collect(),
        )
    }

    fn partitioned(nodes: usize, routing: Routing, count: u32) -> View {
        View::new(
            1,
            routing,
            Placement::Partitions { count },
            1,
            (0..nodes).map(|i| format!("10.0.0.{i}:7001")).collect(),
        )
    }

    /// Relays from `start` to the owner of `position`, failing the test on a loop.
    fn relays(ring: &Ring, start: usize, position: &Position) -> usize {
        let owner = ring.owner(position);
        let mut at = start;
        let mut relays = 0;
        while at != owner {
            at = ring.next_hop(at, position);
            relays += 1;
            assert!(relays <= ring.relay_bound(), "routing loops");
        }
        relays
    }

    fn pos(first: u8) -> Position {
        let mut p = [0u8; 20];
        p[0] = first;
        p
    }

    #[test]
    fn positions_are_full_sha1_digests() {
        assert_eq!(
            position_hex(&key_position(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(node_position("n1", 0), key_position(b"n1"));
        assert_ne!(node_position("n1", 1), node_position("n1", 0));
    }

    #[test]
    fn one_node_owns_everything() {
        let ring = Ring::new(view(&["only:1"], Routing::Successor, 1)).unwrap();
        for first in [0u8, 1, 127, 255] {
            assert_eq!(ring.owner(&pos(first)), 0);
        }
        assert_eq!(ring.owner(&[0xff; 20]), 0);
        assert_eq!(ring.owner(&[0; 20]), 0);
    }

    #[test]
    fn a_node_owns_from_its_position_up_to_its_successor() {
        let ring = Ring::new(view(&["a:1", "b:1", "c:1", "d:1"], Routing::Successor, 1)).unwrap();
        let points: Vec<(Position, usize)> = ring.points().map(|(p, i)| (*p, i)).collect();
        for (k, (p, node)) in points.iter().enumerate() {
            // The point itself belongs to its node.
            assert_eq!(ring.owner(p), *node);
            // The position just before the next point still does.
            let next = points[(k + 1) % points.len()].0;
            let mut before_next = next;
            for byte in before_next.iter_mut().rev() {
                if *byte == 0 {
                    *byte = 0xff;
                } else {
                    *byte -= 1;
                    break;
                }
            }
            if k + 1 < points.len() {
                assert_eq!(ring.owner(&before_next), *node);
            }
        }
        // Wrap-around: below the first point and at the very top both belong to the last point.
        let last = points.last().unwrap().1;
        assert_eq!(
            ring.owner(&[0; 20]),
            if points[0].0 == [0; 20] {
                points[0].1
            } else {
                last
            }
        );
        assert_eq!(ring.owner(&[0xff; 20]), last);
    }

    #[test]
    fn successor_routing_walks_the_ring_and_direct_jumps() {
        let nodes = ["a:1", "b:1", "c:1", "d:1", "e:1"];
        for routing in [Routing::Successor, Routing::Direct] {
            let ring = Ring::new(view(&nodes, routing, 1)).unwrap();
            for k in 0..500u32 {
                let key = format!("key{k}");
                let position = key_position(key.as_bytes());
                let owner = ring.owner(&position);
                for start in 0..nodes.len() {
                    let mut at = start;
                    let mut relays = 0;
                    while at != owner {
                        at = ring.next_hop(at, &position);
                        relays += 1;
                        assert!(relays < nodes.len(), "routing loops");
                    }
                    if routing == Routing::Direct {
                        assert!(relays <= 1);
                    }
                }
            }
        }
    }

    #[test]
    fn successor_routing_with_vnodes_terminates() {
        let ring = Ring::new(view(&["a:1", "b:1", "c:1"], Routing::Successor, 8)).unwrap();
        for k in 0..300u32 {
            let position = key_position(&k.to_be_bytes());
            let owner = ring.owner(&position);
            for start in 0..3 {
                let mut at = start;
                let mut relays = 0;
                while at != owner {
                    at = ring.next_hop(at, &position);
                    relays += 1;
                    assert!(relays <= 24, "routing loops");
                }
            }
        }
    }

    #[test]
    fn bad_views_are_refused() {
        assert!(Ring::new(view(&[], Routing::Successor, 1)).is_err());
        assert!(Ring::new(view(&["a:1", "a:1"], Routing::Successor, 1)).is_err());
        assert!(Ring::new(view(&["a:1"], Routing::Successor, 0)).is_err());
        assert!(Ring::new(partitioned(3, Routing::Direct, 12)).is_err());
        assert!(Ring::new(partitioned(5, Routing::Direct, 4)).is_err());
        assert!(Ring::new(partitioned(1, Routing::Direct, MAX_PARTITIONS * 2)).is_err());
        assert!(Ring::new(partitioned(4, Routing::Direct, 4)).is_ok());
        // What a view from the network may make a node build is bounded.
        assert!(Ring::new(partitioned(MAX_NODES + 1, Routing::Direct, MAX_PARTITIONS)).is_err());
        let names: Vec<String> = (0..300).map(|i| format!("n{i}:1")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert!(Ring::new(view(&names, Routing::Direct, 4000)).is_err());
    }

    #[test]
    fn points_sharing_their_first_64_bits_still_own_by_the_full_position() {
        // Partition starts have zero low bits, so keys whose head equals a start exercise the
        // tie rule: a position at or past the point belongs to it.
        let ring = Ring::new(partitioned(4, Routing::Direct, 4)).unwrap();
        let nodes: Vec<usize> = ring.points().map(|(_, n)| n).collect();
        for (k, (start, node)) in ring.points().enumerate() {
            assert_eq!(ring.owner(start), node);
            let mut inside = *start;
            inside[19] = 1;
            assert_eq!(ring.owner(&inside), node);
            if k > 0 {
                let mut one = [0u8; 20];
                one[19] = 1;
                let before = sub_mod(start, &one);
                assert_eq!(ring.owner(&before), nodes[k - 1]);
            }
        }
    }

    #[test]
    fn position_arithmetic_wraps_at_2_pow_160() {
        let mut one = [0u8; 20];
        one[19] = 1;
        assert_eq!(sub_mod(&[0; 20], &one), [0xff; 20]);
        assert_eq!(add_pow2(&[0xff; 20], 0), [0; 20]);
        assert_eq!(add_pow2(&[0; 20], 159)[0], 0x80);
        assert_eq!(add_pow2(&[0; 20], 9)[18], 0x02);
        assert_eq!(highest_bit(&one), Some(0));
        assert_eq!(highest_bit(&[0xff; 20]), Some(159));
        assert_eq!(highest_bit(&[0; 20]), None);
        assert_eq!(partition_start(3, 4)[0], 0xc0);
        assert_eq!(partition_start(1, 1 << 16)[..3], [0, 1, 0]);
        assert_eq!(partition_start(0, 1), [0; 20]);
    }

    #[test]
    fn finger_routing_arrives_in_logarithmic_relays() {
        for nodes in [2usize, 5, 16, 64] {
            let names: Vec<String> = (0..nodes).map(|i| format!("node-{i}:7001")).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let ring = Ring::new(view(&names, Routing::Finger, 1)).unwrap();
            let mut total = 0;
            let mut count = 0;
            for k in 0..400u32 {
                let position = key_position(&k.to_le_bytes());
                let start = (k as usize * 7) % nodes;
                let taken = relays(&ring, start, &position);
                // Each finger relay at least halves the distance left; with N points the
                // owner is reached within about log2 N relays.
                assert!(taken <= 2 * (nodes.ilog2() as usize + 1), "{taken} relays");
                total += taken;
                count += 1;
            }
            let mean = total as f64 / count as f64;
            assert!(mean <= 0.5 * f64::from(nodes.ilog2()) + 1.0, "mean {mean}");
        }
    }

    #[test]
    fn every_mode_arrives_with_partitions_and_vnodes() {
        let hashed = view(&["a:1", "b:1", "c:1", "d:1", "e:1"], Routing::Finger, 16);
        for base in [hashed, partitioned(5, Routing::Finger, 256)] {
            for routing in [Routing::Successor, Routing::Finger, Routing::Direct] {
                let ring = Ring::new(View {
                    routing,
                    ..base.clone()
                })
                .unwrap();
                for k in 0..300u32 {
                    let position = key_position(&k.to_be_bytes());
                    for start in 0..5 {
                        let taken = relays(&ring, start, &position);
                        if routing == Routing::Direct {
                            assert!(taken <= 1);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn partitions_are_dealt_evenly_and_a_new_node_moves_only_its_share() {
        for nodes in [1usize, 3, 8, 9, 100] {
            let ring = Ring::new(partitioned(nodes, Routing::Direct, 1024)).unwrap();
            let mut held = vec![0usize; nodes];
            for (_, node) in ring.points() {
                held[node] += 1;
            }
            let (min, max) = (held.iter().min().unwrap(), held.iter().max().unwrap());
            assert!(max - min <= 1, "{nodes} nodes: {held:?}");
            assert_eq!(held.iter().sum::<usize>(), 1024);
        }
        let before = deal_owners(&partitioned(8, Routing::Direct, 4096).nodes, 4096);
        let after = deal_owners(&partitioned(9, Routing::Direct, 4096).nodes, 4096);
        let moved: Vec<usize> = (0..4096).filter(|&p| before[p] != after[p]).collect();
        assert_eq!(moved.len(), 4096 / 9);
        assert!(
            moved.iter().all(|&p| after[p] == 8),
            "only the new node gains"
        );
        // The deal is a function of the node list alone.
        assert_eq!(
            before,
            deal_owners(&partitioned(8, Routing::Direct, 4096).nodes, 4096)
        );
    }

    #[test]
    fn a_join_moves_only_the_newcomers_share_and_a_leave_only_the_leavers() {
        let eight = partitioned(8, Routing::Direct, 4096);
        let joined = join_owners(&eight.owners, 8, "node-8:1");
        let moved = (0..4096).filter(|&p| eight.owners[p] != joined[p]).count();
        assert_eq!(moved, 4096 / 9);
        let held = |owners: &[u16], n: usize| owners.iter().filter(|&&o| o == n as u16).count();
        let counts: Vec<usize> = (0..9).map(|n| held(&joined, n)).collect();
        assert!(
            counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
            "{counts:?}"
        );
        let left = leave_owners(&joined, 3).unwrap();
        let moved: Vec<usize> = (0..4096).filter(|&p| joined[p] != left[p]).collect();
        assert_eq!(moved.len(), held(&joined, 3));
        assert!(moved.iter().all(|&p| joined[p] == 3));
        let counts: Vec<usize> = (0..9).filter(|&n| n != 3).map(|n| held(&left, n)).collect();
        assert!(
            counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
            "{counts:?}"
        );
        assert_eq!(held(&left, 3), 0);
        assert_eq!(leave_owners(&[0u16; 16], 0), None);
        // After a leave, a join takes an even share of the members that own partitions.
        let rejoined = join_owners(&left, 3, "node-3:1");
        assert_eq!(held(&rejoined, 3), 4096 / 9);
    }

    #[test]
    fn an_owner_table_is_checked_and_a_move_is_its_target() {
        let mut moving = partitioned(3, Routing::Direct, 64);
        moving.owners[5] = 7;
        assert!(Ring::new(moving.clone()).is_err());
        moving.owners[5] = 0;
        moving.target = vec![1; 63];
        assert!(Ring::new(moving.clone()).is_err());
        moving.target = vec![1; 64];
        let ring = Ring::new(moving.clone()).unwrap();
        assert!(ring.view().is_moving());
        assert_eq!(
            ring.owner(&partition_start(5, 64)),
            0,
            "chains follow the owners"
        );
        let moved = Ring::new(moving.moved()).unwrap();
        assert!(!moved.view().is_moving());
        assert_eq!(moved.owner(&partition_start(5, 64)), 1);
        assert_eq!(moved.view().owning(), vec![false, true, false]);
        let mut hashed = view(&["a:1"], Routing::Direct, 1);
        hashed.owners = vec![0];
        assert!(Ring::new(hashed).is_err());
    }

    #[test]
    fn shares_add_up_to_one() {
        let ring = Ring::new(view(&["a:1", "b:1", "c:1"], Routing::Successor, 16)).unwrap();
        let total: f64 = ring.shares().iter().sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
    }

    #[test]
    fn chains_are_the_owner_then_the_next_distinct_nodes_clockwise() {
        for placement in [
            Placement::Hashed { per_node: 1 },
            Placement::Hashed { per_node: 8 },
        ] {
            let nodes: Vec<String> = (0..5).map(|i| format!("10.0.0.{i}:7001")).collect();
            let ring = Ring::new(View::new(1, Routing::Direct, placement, 3, nodes)).unwrap();
            let points: Vec<(Position, usize)> = ring.points().map(|(p, n)| (*p, n)).collect();
            for k in 0..500u32 {
                let position = key_position(&k.to_be_bytes());
                let chain: Vec<usize> = ring.chain(&position).members().collect();
                // The slow way: walk the points clockwise from the owner's point.
                let start = points.iter().rposition(|(p, _)| *p <= position);
                let start = start.unwrap_or(points.len() - 1);
                let mut expected = Vec::new();
                for step in 0..points.len() {
                    let node = points[(start + step) % points.len()].1;
                    if !expected.contains(&node) {
                        expected.push(node);
                    }
                    if expected.len() == 3 {
                        break;
                    }
                }
                assert_eq!(chain, expected, "{placement}, key {k}");
                assert_eq!(chain[0], ring.owner(&position));
            }
        }
    }

    #[test]
    fn partition_chains_are_the_owner_then_the_next_nodes_in_list_order() {
        let nodes: Vec<String> = (0..5).map(|i| format!("10.0.0.{i}:7001")).collect();
        let placement = Placement::Partitions { count: 64 };
        let ring = Ring::new(View::new(1, Routing::Direct, placement, 3, nodes.clone())).unwrap();
        let mut chains_seen = HashSet::new();
        for k in 0..500u32 {
            let position = key_position(&k.to_be_bytes());
            let owner = ring.owner(&position);
            let chain: Vec<usize> = ring.chain(&position).members().collect();
            assert_eq!(
                chain,
                vec![owner, (owner + 1) % 5, (owner + 2) % 5],
                "key {k}"
            );
            chains_seen.insert(chain);
        }
        // Five chains in all, one per owner: a node's chains share their other members.
        assert_eq!(chains_seen.len(), 5);

        // A node that owns no partition yet (a join under way) is in no chain: the chains skip
        // it and wrap round to the first node.
        let mut joining = View::new(1, Routing::Direct, placement, 3, nodes);
        joining.nodes.push("10.0.0.9:7001".into());
        joining.states.push(NodeState::Up);
        joining.since.push(1);
        let joining = Ring::new(joining).unwrap();
        for point in 0..joining.point_count() {
            let chain: Vec<usize> = joining.chain_at(point).members().collect();
            let owner = chain[0];
            assert_eq!(chain, vec![owner, (owner + 1) % 5, (owner + 2) % 5]);
        }
    }

    #[test]
    fn a_join_or_leave_changes_only_the_partition_chains_of_the_node_that_moves() {
        let nodes: Vec<String> = (0..8).map(|i| format!("10.0.0.{i}:7001")).collect();
        let placement = Placement::Partitions { count: 1024 };
        let before = View::new(1, Routing::Direct, placement, 3, nodes.clone());
        let members =
            |ring: &Ring, point: usize| -> Vec<usize> { ring.natural_members(point).collect() };
        let old = Ring::new(before.clone()).unwrap();

        let mut joined = View::new(2, Routing::Direct, placement, 3, nodes.clone());
        joined.nodes.push("10.0.0.8:7001".into());
        joined.states.push(NodeState::Up);
        joined.since.push(0);
        joined.owners = join_owners(&before.owners, 8, "10.0.0.8:7001");
        let joined = Ring::new(joined).unwrap();
        let changed = (0..1024)
            .filter(|&p| members(&old, p) != members(&joined, p))
            .inspect(|&p| assert!(members(&joined, p).contains(&8), "point {p}"))
            .count();
        // Its own partitions (1024 / 9) and those of the two nodes before it in the list.
        let expected = (0..1024)
            .filter(|&p| members(&joined, p).contains(&8))
            .count();
        assert_eq!(changed, expected);
        assert!(changed <= 3 * 1024 / 9 + 3, "{changed} chains changed");

        let mut left = before.clone();
        left.owners = leave_owners(&before.owners, 3).unwrap();
        let left = Ring::new(left).unwrap();
        let changed = (0..1024)
            .filter(|&p| members(&old, p) != members(&left, p))
            .inspect(|&p| assert!(members(&old, p).contains(&3), "point {p}"))
            .count();
        assert_eq!(
            changed,
            (0..1024).filter(|&p| members(&old, p).contains(&3)).count()
        );
        assert!((0..1024).all(|p| !members(&left, p).contains(&3)));
    }

    #[test]
    fn a_down_node_leaves_its_chains_and_nothing_else_moves() {
        let nodes: Vec<String> = (0..5).map(|i| format!("10.0.0.{i}:7001")).collect();
        let all = View::new(
            1,
            Routing::Direct,
            Placement::Partitions { count: 64 },
            3,
            nodes,
        );
        let mut one_down = all.clone();
        one_down.epoch = 2;
        one_down.states[2] = NodeState::Down;
        let before = Ring::new(all).unwrap();
        let after = Ring::new(one_down).unwrap();
        for k in 0..500u32 {
            let key = k.to_be_bytes();
            let old: Vec<usize> = before.chain_of_key(&key).members().collect();
            let new: Vec<usize> = after.chain_of_key(&key).members().collect();
            let kept: Vec<usize> = old.iter().copied().filter(|&n| n != 2).collect();
            assert_eq!(new, kept, "key {k}");
            assert_eq!(before.owner_of_key(&key), after.owner_of_key(&key));
        }
    }

    #[test]
    fn chains_are_never_longer_than_the_nodes() {
        let nodes: Vec<String> = (0..2).map(|i| format!("10.0.0.{i}:7001")).collect();
        let ring = Ring::new(View::new(1, Routing::Direct, DEFAULT_PLACEMENT, 3, nodes)).unwrap();
        let chain = ring.chain_of_key(b"k");
        assert_eq!(chain.len(), 2);
        assert_ne!(chain.head(), chain.tail());
        assert_eq!(chain.successor(chain.head().unwrap()), chain.tail());
        assert_eq!(chain.successor(chain.tail().unwrap()), None);
        let mut bad = View::new(1, Routing::Direct, DEFAULT_PLACEMENT, 0, vec!["a:1".into()]);
        assert!(Ring::new(bad.clone()).is_err());
        bad.replicas = MAX_REPLICAS + 1;
        assert!(Ring::new(bad).is_err());
    }
}
