//! ringkv: a distributed key-value store built as a ring of backend nodes behind one frontend.
//!
//! ```text
//!  kvcli / Client ──frames──▶ frontend ──▶ backend A ──relay──▶ backend B (head) ──▶ C ──▶ D (tail)
//!                             (pool of      (relays keys whose     (applies a write and passes it
//!                              threads,      chain it is not in)    down the chain; the tail answers
//!                              view keeper)                         reads)
//! ```
//!
//! The pieces, one concern each:
//!
//! - [`protocol`]: the wire format (length-prefixed, CRC-checked frames), its limits, and the
//!   payloads of SIZE, STATS and VIEW_INSTALL. PROTOCOL.md is its normative description.
//! - [`ring`]: SHA-1 positions, views, placement (equal partitions or hashed positions), the one
//!   ownership rule and next-hop routing (direct, Chord fingers, or the paper's successor).
//! - [`store`]: the storage engine trait and the in-memory engine; [`wal`] is the write-ahead
//!   log (format, fsync policies, recovery, compaction) and [`durable`] the engine built on both.
//! - [`connection`]: framed reads and writes on a socket, with timeouts; [`peers`] pools
//!   connections between servers and carries a batch of requests to several peers at once.
//! - [`auth`]: client passwords (`--require-auth`) and what a connection presents when it opens.
//! - [`server`]: the accept loop, connection limit, per-connection frame loop and shutdown
//!   that both servers share; [`pool`] is the frontend's bounded thread pool.
//! - [`cluster`]: the control plane: chain replication's rules ([`cluster::chain`]), the
//!   frontend's view keeper ([`cluster::keeper`]) and a backend's view on disk
//!   ([`cluster::view_file`]); its module doc states the protocol's invariants.
//! - [`backend`] and [`frontend`]: the two servers; [`local`] runs both in one process.
//! - [`resp`]: the frontend's Redis-protocol (RESP2) door, for redis-cli and Redis clients.
//! - [`client`]: the library clients use, with pipelining; [`cli`] holds what `kvcli` prints.
//! - [`loadgen`]: `kvcli bench`, a load generator with HDR latency percentiles.
//! - [`metrics`]: the Prometheus endpoint (`--metrics-listen`) and the latency histogram.
//!
//! One PUT, hop by hop: [`Client::put`] sends a frame; the frontend's `FrontendState::forward`
//! picks an entry backend (the head of the key's chain, [`Ring::chain`], unless the paper's
//! random entry is chosen) and stamps the view's epoch; the backend's `BackendState::key_batch`
//! takes the key's lock, checks the epoch and either applies the value and passes it down the
//! chain (`BackendState::route`, CHAIN_PUT to the next member, which does the same until the
//! tail) or relays the frame towards the head ([`Ring::next_hop`]); the tail's answer travels
//! back the same way. Pipelined requests take the same path in batches
//! ([`server::Handler::handle_batch`], [`peers::Peers::call_batch`]). Meanwhile
//! [`cluster::keeper`] probes every backend and publishes a new view when one dies.

pub mod auth;
pub mod backend;
pub mod budget;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod durable;
pub mod error;
pub mod expiry;
pub mod frontend;
pub mod loadgen;
pub mod local;
pub mod metrics;
pub mod mux;
pub mod peers;
pub mod pool;
pub mod protocol;
pub mod resp;
pub mod ring;
pub mod rng;
pub mod scan;
pub mod server;
pub mod store;
pub mod update;
pub mod wal;

pub use auth::{Credentials, Password};
pub use backend::{Backend, BackendConfig};
pub use client::{ChangeProgress, Client, ClientOptions, Reply, Request};
pub use cluster::membership::Change;
pub use cluster::token::ClusterToken;
pub use error::{Error, Result};
pub use frontend::{Entry, Frontend, FrontendConfig};
pub use local::LocalCluster;
pub use ring::{Chain, NodeState, Placement, Ring, Routing, View};
pub use server::ServerOptions;
