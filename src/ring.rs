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
    /// Every node knows every node: relay straight to the owner (at most one relay).
    Direct = 2,
}

impl Routing {
    /// The routing mode numbered `byte` on the wire.
    pub fn from_u8(byte: u8) -> Option<Routing> {
        match byte {
            0 => Some(Routing::Successor),
            2 => Some(Routing::Direct),
            _ => None,
        }
    }
}

impl fmt::Display for Routing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Routing::Successor => "successor",
            Routing::Direct => "direct",
        })
    }
}

impl std::str::FromStr for Routing {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Routing, String> {
        match s {
            "successor" => Ok(Routing::Successor),
            "direct" => Ok(Routing::Direct),
            _ => Err(format!(
                "unknown routing mode {s:?} (expected successor or direct)"
            )),
        }
    }
}

/// The member list every node agrees on, numbered by an epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// Increases with every change of membership; requests carry it.
    pub epoch: u64,
    /// How backends relay keys they do not own.
    pub routing: Routing,
    /// Points per node on the ring (1: the paper).
    pub vnodes: u16,
    /// Backend addresses, as clients of the backends reach them.
    pub nodes: Vec<String>,
}

/// A view with its points sorted, ready to answer "who owns this" and "where next".
#[derive(Debug, Clone)]
pub struct Ring {
    view: View,
    /// Every point of every node, sorted by position; the `u32` indexes `view.nodes`.
    points: Vec<(Position, u32)>,
}

impl Ring {
    /// Builds the ring of a view. Fails on an empty view, duplicate addresses or zero vnodes.
    pub fn new(view: View) -> Result<Ring> {
        if view.nodes.is_empty() {
            return Err(Error::View("a view needs at least one node".into()));
        }
        if view.vnodes == 0 {
            return Err(Error::View("a node needs at least one position".into()));
        }
        let mut seen = HashSet::new();
        for node in &view.nodes {
            if !seen.insert(node.as_str()) {
                return Err(Error::View(format!("node {node} is listed twice")));
            }
        }
        let mut points = Vec::with_capacity(view.nodes.len() * view.vnodes as usize);
        for (index, node) in view.nodes.iter().enumerate() {
            for vnode in 0..view.vnodes {
                points.push((node_position(node, vnode), index as u32));
            }
        }
        points.sort_unstable();
        // Two points at one position would make ownership depend on sort order; with SHA-1 it
        // takes a collision, but a view must never be ambiguous.
        points.dedup_by(|next, prev| next.0 == prev.0);
        Ok(Ring { view, points })
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
        match self.points.partition_point(|(p, _)| p <= position) {
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

    /// Where node `from`, which does not own `position`, sends a request for it.
    ///
    /// `Successor`: from `from`'s point nearest before `position` (counter-clockwise), the node of
    /// the next point clockwise; with one point per node that is `from`'s successor, and every
    /// hop strictly shortens the clockwise distance to the owner. `Direct`: the owner.
    pub fn next_hop(&self, from: usize, position: &Position) -> usize {
        match self.view.routing {
            Routing::Direct => self.owner(position),
            Routing::Successor => {
                let n = self.points.len();
                let owner_point = self.point_of(position);
                for back in 0..n {
                    let i = (owner_point + n - back) % n;
                    if self.points[i].1 as usize == from {
                        return self.points[(i + 1) % n].1 as usize;
                    }
                }
                // `from` is not on the ring (it is not in the view): the owner is as good as any.
                self.owner(position)
            }
        }
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

/// A position as a fraction of the ring, in [0, 1).
fn position_to_f64(position: &Position) -> f64 {
    position
        .iter()
        .take(8)
        .rev()
        .fold(0.0, |acc, &b| (acc + f64::from(b)) / 256.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(nodes: &[&str], routing: Routing, vnodes: u16) -> View {
        View {
            epoch: 1,
            routing,
            vnodes,
            nodes: nodes.iter().map(|s| s.to_string()).collect(),
        }
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
    }

    #[test]
    fn shares_add_up_to_one() {
        let ring = Ring::new(view(&["a:1", "b:1", "c:1"], Routing::Successor, 16)).unwrap();
        let total: f64 = ring.shares().iter().sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
    }
}
