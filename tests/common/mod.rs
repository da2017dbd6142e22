//! What the socket-level integration tests share: starting servers on loopback, raw frame
//! reading and writing, and bounded waiting.
#![allow(dead_code)]

pub mod process;
pub mod resp;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ringkv::protocol::payload::NodeReport;
use ringkv::protocol::{self, Frame, Limits, Opcode, Status};
use ringkv::{BackendConfig, Client, Entry, FrontendConfig, LocalCluster, Routing};

/// A fresh directory under the system's temporary directory, removed when dropped.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// A new empty directory whose name starts with `ringkv-{prefix}-` and ends with `name`.
    pub fn new(prefix: &str, name: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "ringkv-{prefix}-{}-{}-{name}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How long any single wait in these tests may take before the test fails instead of hanging.
pub const BOUND: Duration = Duration::from_secs(10);

/// A cluster of `n` backends with the given entry policy and routing, default everything else.
pub fn cluster(n: usize, entry: Entry, routing: Routing) -> LocalCluster {
    LocalCluster::start(
        n,
        BackendConfig::default(),
        FrontendConfig {
            entry,
            routing,
            // One copy per key, as the paper: these tests count relays to a key's one owner.
            replicas: Some(1),
            threads: 8,
            startup_timeout: Duration::from_secs(5),
            ..FrontendConfig::default()
        },
    )
    .unwrap()
}

/// A cluster of `backends` backends keeping `replicas` copies of each key, default everything
/// else.
pub fn replicated_cluster(backends: usize, replicas: usize) -> LocalCluster {
    LocalCluster::start(
        backends,
        BackendConfig::default(),
        FrontendConfig {
            replicas: Some(replicas),
            startup_timeout: Duration::from_secs(5),
            ..FrontendConfig::default()
        },
    )
    .unwrap()
}

/// A client connected to `addr`.
pub fn client(addr: SocketAddr) -> Client {
    Client::connect(&addr.to_string()).unwrap()
}

/// A raw socket to `addr` whose reads give up after [`BOUND`].
pub fn raw(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, BOUND).unwrap();
    stream.set_read_timeout(Some(BOUND)).unwrap();
    stream.set_write_timeout(Some(BOUND)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// The wire bytes of a request.
pub fn request_bytes(opcode: Opcode, id: u64, key: &[u8], value: &[u8]) -> Vec<u8> {
    Frame::request(opcode, id, key.to_vec(), value.to_vec()).encode()
}

/// Reads one frame from a raw socket, keeping leftover bytes in `buf`. `None` when the peer
/// closed the connection (or reset it) before a whole frame arrived; panics on a read timeout,
/// so a server that neither answers nor closes fails the test.
pub fn read_frame_buffered(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Frame> {
    let mut chunk = [0u8; 64 * 1024];
    loop {
        match protocol::decode(buf, usize::MAX / 2) {
            Ok(Some((frame, used))) => {
                buf.drain(..used);
                return Some(frame);
            }
            Ok(None) => {}
            Err(e) => panic!("the server sent bytes that are not a frame: {e}"),
        }
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("reading an answer failed: {e}"),
        }
    }
}

/// Reads one frame from a raw socket (see [`read_frame_buffered`]).
pub fn read_frame(stream: &mut TcpStream) -> Option<Frame> {
    read_frame_buffered(stream, &mut Vec::new())
}

/// Sends a request on a raw socket and reads its answer.
pub fn raw_call(
    stream: &mut TcpStream,
    opcode: Opcode,
    id: u64,
    key: &[u8],
    value: &[u8],
) -> Frame {
    stream
        .write_all(&request_bytes(opcode, id, key, value))
        .unwrap();
    let answer = read_frame(stream).expect("the server closed the connection instead of answering");
    assert_eq!(
        answer.request_id, id,
        "answer to the wrong request: {answer:?}"
    );
    answer
}

/// Asserts that the peer closes the connection (a read returns 0 or a reset) within [`BOUND`],
/// with no further bytes sent first.
pub fn assert_closed(stream: &mut TcpStream) {
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return,
            Ok(_) => panic!("the server sent more bytes after its error answer"),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }
}

/// Asserts that a fresh client can PING, PUT and GET at `addr` (a frontend, or a backend that
/// has a view).
pub fn assert_serves(addr: SocketAddr) {
    let mut client = client(addr);
    client.ping().unwrap();
    let key = format!("still-serving-{}", client_counter());
    client.put(key.as_bytes(), b"yes").unwrap();
    assert_eq!(
        client.get(key.as_bytes()).unwrap().as_deref(),
        Some(&b"yes"[..])
    );
}

/// Asserts that a fresh raw connection to `addr` gets an OK answer to a PING.
pub fn assert_pings(addr: SocketAddr) {
    let mut stream = raw(addr);
    let answer = raw_call(&mut stream, Opcode::PING, 77, b"", b"");
    assert_eq!(answer.status, Status::OK, "{answer:?}");
}

fn client_counter() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Calls `attempt` until it returns `Some`, at most for `bound`; panics with `what` after that.
pub fn retry<T>(bound: Duration, what: &str, mut attempt: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(value) = attempt() {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up after {bound:?}: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Small limits for servers that must refuse big keys and values politely.
pub fn small_limits() -> Limits {
    Limits {
        max_key: 64,
        max_value: 1024,
        max_frame: 64 * 1024,
    }
}

/// The reports of a SIZE or STATS answer split into the per-node ones and the `total` one.
pub fn split_total(reports: &[NodeReport]) -> (&[NodeReport], &NodeReport) {
    let (total, nodes) = reports.split_last().expect("an empty report list");
    assert_eq!(total.addr, "total", "the last report is not the total");
    (nodes, total)
}

/// The sum of counter `name` over the nodes that answered.
pub fn sum(nodes: &[NodeReport], name: &str) -> u64 {
    nodes.iter().map(|r| r.counter(name)).sum()
}

/// Reads what `stream` is sent at about 1.3 MB/s (a client that takes its answers a trickle at
/// a time) until the server closes it; returns how long that took from the first read, and the
/// bytes taken. Panics if nothing comes within 10 s or the server still serves after 25 s.
pub fn read_a_trickle_until_closed(stream: &mut TcpStream) -> (Duration, usize) {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let started = Instant::now();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut taken = 0usize;
    loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) if taken > 0 => return (started.elapsed(), taken),
            Ok(n) => taken += n,
            // A loaded machine may take a while to make the first answers.
            Err(e)
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
                    && started.elapsed() < Duration::from_secs(10) => {}
            Err(e) => panic!("no answer at all: {e}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "still served after {:?} ({taken} bytes taken)",
            started.elapsed()
        );
        // About 1.3 MB/s: 64 MiB would take almost a minute.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The columns of the row of a printed `table` whose first column is `name`.
pub fn table_row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|columns| columns.first() == Some(&name))
        .unwrap_or_else(|| panic!("no row for {name}:\n{table}"))
}

/// A number as kvcli prints it, digits grouped with commas.
pub fn number<T: std::str::FromStr>(text: &str) -> T
where
    T::Err: std::fmt::Display,
{
    text.replace(',', "")
        .parse()
        .unwrap_or_else(|e| panic!("{text:?} is not a number: {e}"))
}

/// A loopback address nothing listens on, and the socket that keeps it so: its port is bound
/// but not listening, so a connection to it is refused, and no server started meanwhile (by
/// this test or another running beside it) can be given it, as it could a port bound and let go.
pub fn dead_addr() -> (std::os::fd::OwnedFd, String) {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor this function owns; every result is checked.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let socket = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let bound = libc::bind(fd, (&addr as *const libc::sockaddr_in).cast(), len);
        assert_eq!(bound, 0, "bind: {}", std::io::Error::last_os_error());
        let mut got_len = len;
        let named = libc::getsockname(
            fd,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut got_len,
        );
        assert_eq!(named, 0, "getsockname: {}", std::io::Error::last_os_error());
        (socket, format!("127.0.0.1:{}", u16::from_be(addr.sin_port)))
    }
}
