//! `ringkv`: runs a backend, a frontend, or a whole local cluster.

use std::io::Write;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use argh::FromArgs;
use ringkv::cli::{keeper_options, replicas, ring_design, server_options};
use ringkv::cluster::token::ClusterToken;
use ringkv::frontend::Answering;
use ringkv::{
    Backend, BackendConfig, Entry, Frontend, FrontendConfig, LocalCluster, Password, Routing,
};

/// ringkv: a distributed key-value store (frontend + ring of backends). `ringkv --version`
/// prints its version.
#[derive(FromArgs)]
struct Args {
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Command {
    Backend(BackendArgs),
    Frontend(FrontendArgs),
    Local(LocalArgs),
}

/// Run a backend node: it stores the keys it owns and relays the others.
#[derive(FromArgs)]
#[argh(subcommand, name = "backend")]
struct BackendArgs {
    /// address to listen on, e.g. 0.0.0.0:7001 (port 0 picks one)
    #[argh(option)]
    listen: String,
    /// most bytes of keys plus values to store (default: no limit)
    #[argh(option)]
    max_bytes: Option<u64>,
    /// directory for the write-ahead log, replayed on start (default: memory only)
    #[argh(option)]
    data_dir: Option<std::path::PathBuf>,
    /// most bytes the write-ahead log may take on disk, the room kept to compact it included;
    /// writes that do not fit even after compaction get STORAGE_FULL (default: no limit)
    #[argh(option)]
    max_disk_bytes: Option<u64>,
    /// when logged writes reach the disk: always, everysec or never (default everysec)
    #[argh(option, default = "ringkv::wal::FsyncPolicy::EverySec")]
    fsync: ringkv::wal::FsyncPolicy,
    /// start even if the log is corrupt before its tail, keeping the records before the damage
    #[argh(switch)]
    repair_log: bool,
    /// file holding the cluster token that view installs, chain writes and state transfers
    /// must present (default: $RINGKV_CLUSTER_TOKEN; neither: none needed)
    #[argh(option)]
    cluster_token_file: Option<std::path::PathBuf>,
    /// file holding the password every connection must present (AUTH) before anything else is
    /// answered, unless it presents the cluster token; also presented to the other backends
    /// (default: none needed)
    #[argh(option)]
    require_auth: Option<std::path::PathBuf>,
    /// address to serve Prometheus metrics on over HTTP (GET /metrics), e.g. 127.0.0.1:9100;
    /// port 0 picks one (default: off)
    #[argh(option)]
    metrics_listen: Option<String>,
    /// open connections allowed at once; more get BUSY (default 1024)
    #[argh(option, default = "1024")]
    max_connections: usize,
    /// most bytes of requests still arriving and answers not yet taken that client connections
    /// may hold in this process, beyond 128 KiB each; past it large requests wait, then get
    /// BUSY (default: an eighth of the machine's memory, at least 256 MiB)
    #[argh(option)]
    max_inflight_bytes: Option<u64>,
    /// longest key accepted in bytes (default 16384)
    #[argh(option, default = "16384")]
    max_key_bytes: usize,
    /// longest value accepted in bytes (default 4194304)
    #[argh(option, default = "4194304")]
    max_value_bytes: usize,
    /// seconds a read or write may block, and a frame may take to arrive (default 10)
    #[argh(option, default = "10")]
    io_timeout: u64,
    /// seconds an idle connection is kept (default 300)
    #[argh(option, default = "300")]
    idle_timeout: u64,
    /// file of settings (TOML): any flag of this command under its own name, e.g.
    /// `max-connections = 2048`; flags given here override it
    #[argh(option)]
    config: Option<std::path::PathBuf>,
}

/// Run the frontend: clients connect here; it forwards to the backends.
#[derive(FromArgs)]
#[argh(subcommand, name = "frontend")]
struct FrontendArgs {
    /// address to listen on for clients (default 127.0.0.1:7000)
    #[argh(option, default = "String::from(ringkv::cli::DEFAULT_FRONTEND)")]
    listen: String,
    /// worker threads: they forward every request with --answering workers, and only the
    /// requests sent again under a newer view with direct (default 64)
    #[argh(option, default = "64")]
    threads: usize,
    /// shared connections per backend carrying every worker's requests together, matched
    /// back by request id; 0: a pooled connection per request in flight (default 1)
    #[argh(option, default = "ringkv::frontend::DEFAULT_BACKEND_CONNECTIONS")]
    backend_connections: usize,
    /// who waits for the backends' answers: direct (the client connection's thread sends its
    /// requests and the thread reading a backend's answers writes them back; needs
    /// --backend-connections 1 or more) or workers (a pool worker sends, waits and answers)
    /// (default direct)
    #[argh(option, default = "Answering::default()")]
    answering: Answering,
    /// connections with requests that may wait for a worker; past it requests get BUSY (default 128)
    #[argh(option, default = "128")]
    queue: usize,
    /// open client connections allowed at once; more get BUSY (default 1024)
    #[argh(option, default = "1024")]
    max_connections: usize,
    /// most bytes of requests still arriving and answers not yet taken that client connections
    /// may hold in this process, beyond 128 KiB each; past it large requests wait, then get
    /// BUSY (default: an eighth of the machine's memory, at least 256 MiB)
    #[argh(option)]
    max_inflight_bytes: Option<u64>,
    /// the paper's design: --entry random --routing successor --vnodes 1 (each can still be set)
    #[argh(switch)]
    paper: bool,
    /// which backend receives a request: owner (no relay) or random (the paper) (default owner)
    #[argh(option)]
    entry: Option<Entry>,
    /// how backends relay: direct (to the owner), finger (Chord) or successor (the paper) (default direct)
    #[argh(option)]
    routing: Option<Routing>,
    /// place each backend at N hashed positions on the ring (1: the paper)
    #[argh(option)]
    vnodes: Option<u16>,
    /// cut the ring into N equal partitions dealt to the backends (a power of two; default 4096)
    #[argh(option)]
    partitions: Option<u32>,
    /// seconds to wait at start for backends that are not up yet (default 30)
    #[argh(option, default = "30")]
    startup_timeout: u64,
    /// longest key accepted in bytes (default 16384)
    #[argh(option, default = "16384")]
    max_key_bytes: usize,
    /// longest value accepted in bytes (default 4194304)
    #[argh(option, default = "4194304")]
    max_value_bytes: usize,
    /// seconds a read or write may block, and a frame may take to arrive (default 10)
    #[argh(option, default = "10")]
    io_timeout: u64,
    /// seconds an idle client connection is kept (default 300)
    #[argh(option, default = "300")]
    idle_timeout: u64,
    /// copies kept of every key: each key's chain of backends (default: 3, or fewer with
    /// fewer backends; 1 with --paper)
    #[argh(option)]
    replicas: Option<usize>,
    /// milliseconds between two pings of each backend by the view keeper; 0: no keeper, the
    /// view never changes (default 200)
    #[argh(option, default = "200")]
    ping_interval: u64,
    /// milliseconds a backend has to answer a probe; two missed in a row mark it down
    /// (default 400)
    #[argh(option, default = "400")]
    ping_timeout: u64,
    /// address of the Redis-protocol (RESP2) door, e.g. 127.0.0.1:6380 (default: off)
    #[argh(option)]
    resp_listen: Option<String>,
    /// serve beside another frontend, which is the view keeper: take up the views the backends
    /// hold (polled every --ping-interval) and never publish one
    #[argh(switch)]
    follow: bool,
    /// file holding the cluster token presented to the backends (default:
    /// $RINGKV_CLUSTER_TOKEN; neither: none)
    #[argh(option)]
    cluster_token_file: Option<std::path::PathBuf>,
    /// file holding the password clients must present (AUTH, or Redis's AUTH and HELLO ...
    /// AUTH) before anything else is answered; also presented to the backends (default: none
    /// needed)
    #[argh(option)]
    require_auth: Option<std::path::PathBuf>,
    /// address to serve Prometheus metrics on over HTTP (GET /metrics), e.g. 127.0.0.1:9100;
    /// port 0 picks one (default: off)
    #[argh(option)]
    metrics_listen: Option<String>,
    /// answer Redis's FLUSHALL (and FLUSH) by deleting every key (default: refused)
    #[argh(switch)]
    allow_flushall: bool,
    /// file of settings (TOML): any flag of this command under its own name, e.g.
    /// `max-connections = 2048`; flags given here override it
    #[argh(option)]
    config: Option<std::path::PathBuf>,
    /// backend addresses, as the frontend and the other backends reach them
    #[argh(positional)]
    backends: Vec<String>,
}

/// Run a frontend and N backends on loopback, in one process, until Ctrl-C.
#[derive(FromArgs)]
#[argh(subcommand, name = "local")]
struct LocalArgs {
    /// number of backends (default 3)
    #[argh(option, default = "3")]
    backends: usize,
    /// frontend address (default 127.0.0.1:7000; port 0 picks one)
    #[argh(option, default = "String::from(ringkv::cli::DEFAULT_FRONTEND)")]
    listen: String,
    /// frontend worker threads forwarding requests (default 64)
    #[argh(option, default = "64")]
    threads: usize,
    /// the frontend's shared connections per backend (see `ringkv frontend --help`) (default 1)
    #[argh(option, default = "ringkv::frontend::DEFAULT_BACKEND_CONNECTIONS")]
    backend_connections: usize,
    /// who waits for the backends' answers: direct or workers (see `ringkv frontend --help`)
    /// (default direct)
    #[argh(option, default = "Answering::default()")]
    answering: Answering,
    /// the paper's design: --entry random --routing successor --vnodes 1 (each can still be set)
    #[argh(switch)]
    paper: bool,
    /// which backend receives a request: owner (no relay) or random (the paper) (default owner)
    #[argh(option)]
    entry: Option<Entry>,
    /// how backends relay: direct (to the owner), finger (Chord) or successor (the paper) (default direct)
    #[argh(option)]
    routing: Option<Routing>,
    /// place each backend at N hashed positions on the ring (1: the paper)
    #[argh(option)]
    vnodes: Option<u16>,
    /// cut the ring into N equal partitions dealt to the backends (a power of two; default 4096)
    #[argh(option)]
    partitions: Option<u32>,
    /// most bytes of keys plus values per backend (default: no limit)
    #[argh(option)]
    max_bytes: Option<u64>,
    /// most bytes of requests still arriving and answers not yet taken that client connections
    /// may hold in this process (all its parts), beyond 128 KiB each; past it large requests
    /// wait, then get BUSY (default: an eighth of the machine's memory, at least 256 MiB)
    #[argh(option)]
    max_inflight_bytes: Option<u64>,
    /// address of the Redis-protocol (RESP2) door, or off (default: the frontend's host, port
    /// 6380 beside port 7000, else the frontend's port plus one; port 0 when that is 0)
    #[argh(option)]
    resp_listen: Option<String>,
    /// keep each backend's write-ahead log in DIR/backend-N and its address with it, so that a
    /// restart serves the same keys (default: memory only)
    #[argh(option)]
    data_dir: Option<std::path::PathBuf>,
    /// most bytes each backend's write-ahead log may take on disk, the room kept to compact it
    /// included; writes that do not fit even after compaction get STORAGE_FULL (default: no
    /// limit)
    #[argh(option)]
    max_disk_bytes: Option<u64>,
    /// when logged writes reach the disk: always, everysec or never (default everysec)
    #[argh(option, default = "ringkv::wal::FsyncPolicy::EverySec")]
    fsync: ringkv::wal::FsyncPolicy,
    /// copies kept of every key: each key's chain of backends (default: 3, or fewer with
    /// fewer backends; 1 with --paper)
    #[argh(option)]
    replicas: Option<usize>,
    /// milliseconds between two pings of each backend by the view keeper; 0: no keeper, the
    /// view never changes (default 200)
    #[argh(option, default = "200")]
    ping_interval: u64,
    /// milliseconds a backend has to answer a probe; two missed in a row mark it down
    /// (default 400)
    #[argh(option, default = "400")]
    ping_timeout: u64,
    /// file holding the cluster token its parts present to each other, made with a random
    /// token if it does not exist, so that backends started by hand can join (default:
    /// $RINGKV_CLUSTER_TOKEN; neither: a random token that only its own parts know)
    #[argh(option)]
    cluster_token_file: Option<std::path::PathBuf>,
    /// file holding the password clients must present (AUTH, or Redis's AUTH and HELLO ...
    /// AUTH) to the frontend, the Redis door and the backends (default: none needed)
    #[argh(option)]
    require_auth: Option<std::path::PathBuf>,
    /// address to serve Prometheus metrics on over HTTP (GET /metrics) for the frontend and
    /// every backend, e.g. 127.0.0.1:9100; port 0 picks one (default: off)
    #[argh(option)]
    metrics_listen: Option<String>,
    /// answer Redis's FLUSHALL (and FLUSH) by deleting every key (default: refused)
    #[argh(switch)]
    allow_flushall: bool,
    /// file of settings (TOML): any flag of this command under its own name, e.g.
    /// `max-connections = 2048`; flags given here override it
    #[argh(option)]
    config: Option<std::path::PathBuf>,
    /// print the effective settings (the file's, the flags', the defaults) as a file for
    /// --config, and exit
    #[argh(switch)]
    print_config: bool,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let words = match with_config_file(std::env::args().collect()) {
        Ok(words) => words,
        Err(e) => {
            eprintln!("ringkv: {e}");
            return ExitCode::from(2);
        }
    };
    let args: Args = ringkv::cli::parse_words(words);
    let result = match args.command {
        Command::Backend(a) => run_backend(a),
        Command::Frontend(a) => run_frontend(a),
        Command::Local(a) => run_local(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringkv: {e}");
            ExitCode::from(2)
        }
    }
}

/// The command line with the settings of its `--config` file put in (see [`ringkv::config`]).
fn with_config_file(words: Vec<String>) -> Result<Vec<String>, String> {
    if words.len() < 2 {
        return Ok(words);
    }
    let Some(path) = ringkv::config::config_path(&words[2..])? else {
        return Ok(words);
    };
    let path = std::path::PathBuf::from(path);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    // The command's flags, as its own --help lists them.
    let help = match Args::from_args(&[&words[0]], &[&words[1], "--help"]) {
        Err(argh::EarlyExit { output, .. }) => output,
        Ok(_) => String::new(),
    };
    let flags = ringkv::config::FlagSet::from_help(&help);
    let rest = ringkv::config::expand(&words[2..], &path, &text, &flags)?;
    Ok(words[..2].iter().cloned().chain(rest).collect())
}

/// What `ringkv local --print-config` prints: every setting, as a file for `--config`; one
/// not set (its default is decided at start) is shown as a comment.
fn local_config(a: &LocalArgs) -> String {
    use toml::Value;
    let text = |v: &dyn std::fmt::Display| Some(Value::String(v.to_string()));
    let int = |n: u64| Some(Value::Integer(i64::try_from(n).unwrap_or(i64::MAX)));
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().and_then(|p| text(&p.display()));
    let settings: Vec<(&str, Option<Value>)> = vec![
        ("backends", int(a.backends as u64)),
        ("listen", text(&a.listen)),
        ("threads", int(a.threads as u64)),
        ("backend-connections", int(a.backend_connections as u64)),
        ("answering", text(&a.answering)),
        ("paper", Some(Value::Boolean(a.paper))),
        ("entry", a.entry.as_ref().and_then(|e| text(e))),
        ("routing", a.routing.as_ref().and_then(|r| text(r))),
        ("vnodes", a.vnodes.and_then(|n| int(n.into()))),
        ("partitions", a.partitions.and_then(|n| int(n.into()))),
        ("max-bytes", a.max_bytes.and_then(int)),
        ("max-inflight-bytes", a.max_inflight_bytes.and_then(int)),
        ("resp-listen", a.resp_listen.as_ref().and_then(|r| text(r))),
        ("data-dir", path(&a.data_dir)),
        ("max-disk-bytes", a.max_disk_bytes.and_then(int)),
        ("fsync", text(&a.fsync)),
        ("replicas", a.replicas.and_then(|n| int(n as u64))),
        ("ping-interval", int(a.ping_interval)),
        ("ping-timeout", int(a.ping_timeout)),
        ("cluster-token-file", path(&a.cluster_token_file)),
        ("require-auth", path(&a.require_auth)),
        (
            "metrics-listen",
            a.metrics_listen.as_ref().and_then(|m| text(m)),
        ),
        ("allow-flushall", Some(Value::Boolean(a.allow_flushall))),
    ];
    let (set, unset): (Vec<_>, Vec<_>) = settings.into_iter().partition(|(_, v)| v.is_some());
    let mut out = ringkv::config::render(
        set.into_iter()
            .map(|(key, value)| (key, value.expect("partitioned")))
            .collect(),
    );
    for (key, _) in unset {
        out.push_str(&format!("# {key}: not set, its default\n"));
    }
    out
}

fn note_config_file(path: Option<&std::path::Path>) {
    if let Some(path) = path {
        log::info!(
            "settings from {} (flags on the command line override it)",
            path.display()
        );
    }
}

/// Blocks until SIGINT or SIGTERM.
fn wait_for_signal() -> ringkv::Result<()> {
    let (tx, rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .map_err(|e| ringkv::Error::Config(format!("cannot install the signal handler: {e}")))?;
    let _ = rx.recv();
    log::info!("signal received, shutting down");
    Ok(())
}

fn announce(line: String) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// Sets the process's in-flight budget ([`ringkv::budget`]) before any server starts.
fn inflight_budget(max_inflight_bytes: Option<u64>) -> ringkv::Result<()> {
    let limit = match max_inflight_bytes {
        Some(0) => {
            return Err(ringkv::Error::Config(
                "--max-inflight-bytes must be at least 1".into(),
            ))
        }
        Some(limit) => limit,
        None => ringkv::budget::default_limit(),
    };
    ringkv::budget::set_process_limit(limit);
    log::info!("in-flight budget for client connections: {limit} bytes");
    Ok(())
}

/// A disk budget bounds the log; without one it would be silently ignored.
fn disk_budget_needs_a_log(
    max_disk_bytes: Option<u64>,
    data_dir: Option<&std::path::Path>,
) -> ringkv::Result<()> {
    if max_disk_bytes.is_some() && data_dir.is_none() {
        return Err(ringkv::Error::Config(
            "--max-disk-bytes bounds the write-ahead log, so it needs --data-dir".into(),
        ));
    }
    Ok(())
}

fn run_backend(a: BackendArgs) -> ringkv::Result<()> {
    note_config_file(a.config.as_deref());
    inflight_budget(a.max_inflight_bytes)?;
    let server = server_options(
        a.max_connections,
        a.max_key_bytes,
        a.max_value_bytes,
        a.io_timeout,
        a.idle_timeout,
    )?;
    disk_budget_needs_a_log(a.max_disk_bytes, a.data_dir.as_deref())?;
    let mut backend = Backend::start(BackendConfig {
        listen: a.listen,
        server,
        max_bytes: a.max_bytes,
        max_disk_bytes: a.max_disk_bytes,
        data_dir: a.data_dir,
        fsync: a.fsync,
        repair: a.repair_log,
        cluster_token: ClusterToken::load(a.cluster_token_file.as_deref())?,
        password: required_password(a.require_auth.as_deref())?,
        metrics_listen: a.metrics_listen,
    })?;
    announce(format!("backend listening on {}", backend.local_addr()));
    if let Some(addr) = backend.metrics_addr() {
        announce(format!("metrics listening on {addr}"));
    }
    wait_for_signal()?;
    backend.shutdown();
    Ok(())
}

fn run_frontend(a: FrontendArgs) -> ringkv::Result<()> {
    note_config_file(a.config.as_deref());
    inflight_budget(a.max_inflight_bytes)?;
    let server = server_options(
        a.max_connections,
        a.max_key_bytes,
        a.max_value_bytes,
        a.io_timeout,
        a.idle_timeout,
    )?;
    let (entry, routing, placement) =
        ring_design(a.paper, a.entry, a.routing, a.vnodes, a.partitions)?;
    let mut frontend = Frontend::start(FrontendConfig {
        listen: a.listen,
        backends: a.backends,
        threads: a.threads,
        backend_connections: a.backend_connections,
        answering: a.answering,
        queue: a.queue,
        server,
        entry,
        routing,
        placement,
        startup_timeout: Duration::from_secs(a.startup_timeout),
        resp_listen: a.resp_listen.filter(|addr| addr != "off"),
        replicas: replicas(a.paper, a.replicas)?,
        keeper: keeper_options(a.ping_interval, a.ping_timeout)?,
        safe_retries: !a.paper,
        follow: a.follow,
        cluster_token: ClusterToken::load(a.cluster_token_file.as_deref())?,
        password: required_password(a.require_auth.as_deref())?,
        metrics_listen: a.metrics_listen,
        allow_flush: a.allow_flushall,
    })?;
    announce(format!("frontend listening on {}", frontend.local_addr()));
    if let Some(addr) = frontend.resp_addr() {
        announce(format!("resp listening on {addr}"));
    }
    if let Some(addr) = frontend.metrics_addr() {
        announce(format!("metrics listening on {addr}"));
    }
    wait_for_signal()?;
    frontend.shutdown();
    Ok(())
}

fn run_local(a: LocalArgs) -> ringkv::Result<()> {
    note_config_file(a.config.as_deref());
    if a.print_config {
        print!("{}", local_config(&a));
        return Ok(());
    }
    inflight_budget(a.max_inflight_bytes)?;
    if a.backends == 0 {
        return Err(ringkv::Error::Config(
            "--backends must be at least 1".into(),
        ));
    }
    let (entry, routing, placement) =
        ring_design(a.paper, a.entry, a.routing, a.vnodes, a.partitions)?;
    let resp_listen = local_resp_listen(a.resp_listen, &a.listen);
    // Its parts present it to each other; nothing else can install views on its backends.
    let token = local_token(a.cluster_token_file.as_deref())?;
    let password = required_password(a.require_auth.as_deref())?;
    let frontend = FrontendConfig {
        listen: a.listen,
        resp_listen,
        threads: a.threads,
        backend_connections: a.backend_connections,
        answering: a.answering,
        entry,
        routing,
        placement,
        replicas: replicas(a.paper, a.replicas)?,
        keeper: keeper_options(a.ping_interval, a.ping_timeout)?,
        safe_retries: !a.paper,
        cluster_token: Some(token.clone()),
        password: password.clone(),
        // One endpoint for the frontend and every backend (see LocalCluster::start).
        metrics_listen: a.metrics_listen,
        allow_flush: a.allow_flushall,
        ..FrontendConfig::default()
    };
    disk_budget_needs_a_log(a.max_disk_bytes, a.data_dir.as_deref())?;
    let backend = BackendConfig {
        max_bytes: a.max_bytes,
        max_disk_bytes: a.max_disk_bytes,
        data_dir: a.data_dir,
        fsync: a.fsync,
        cluster_token: Some(token),
        password,
        ..BackendConfig::default()
    };
    let mut cluster = LocalCluster::start(a.backends, backend, frontend)?;
    announce(format!("frontend listening on {}", cluster.frontend_addr()));
    if let Some(addr) = cluster.resp_addr() {
        announce(format!("resp listening on {addr}"));
    }
    for addr in cluster.backend_addrs() {
        announce(format!("backend listening on {addr}"));
    }
    if let Some(addr) = cluster.metrics_addr() {
        announce(format!("metrics listening on {addr}"));
    }
    wait_for_signal()?;
    cluster.shutdown();
    Ok(())
}

/// The password of `--require-auth FILE`, if given.
fn required_password(file: Option<&std::path::Path>) -> ringkv::Result<Option<Password>> {
    file.map(Password::from_file).transpose()
}

/// The cluster token of `local`: from `file` (written with a new random token if it does not
/// exist yet), else `$RINGKV_CLUSTER_TOKEN`, else a random one.
fn local_token(file: Option<&std::path::Path>) -> ringkv::Result<ClusterToken> {
    if let Some(path) = file.filter(|p| !p.exists()) {
        let token = ClusterToken::generate()?;
        let mut bytes = token.as_bytes().to_vec();
        bytes.push(b'\n');
        write_private(path, &bytes).map_err(|e| {
            ringkv::Error::Config(format!(
                "cannot write the cluster token to {}: {e}",
                path.display()
            ))
        })?;
        log::info!("cluster token written to {}", path.display());
        return Ok(token);
    }
    match ClusterToken::load(file)? {
        Some(token) => Ok(token),
        None => ClusterToken::generate(),
    }
}

/// Writes `bytes` to a new file at `path` that only its owner may read.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Where `local` opens the Redis-protocol door: as asked (`off`: nowhere), else on the
/// frontend's host: port 6380 beside the default 7000, the frontend's port plus one beside any
/// other (so that two local clusters on two ports run side by side), and port 0 when the
/// frontend's port is 0 (runs asking for free ports never collide on it).
fn local_resp_listen(asked: Option<String>, frontend_listen: &str) -> Option<String> {
    match asked {
        Some(addr) if addr == "off" => None,
        Some(addr) => Some(addr),
        None => {
            let (host, port) = frontend_listen
                .rsplit_once(':')
                .unwrap_or((frontend_listen, ""));
            let resp_port = match port.parse::<u16>() {
                Ok(0) => 0,
                Ok(7000) | Err(_) => 6380,
                Ok(u16::MAX) => u16::MAX - 1,
                Ok(other) => other + 1,
            };
            Some(format!("{host}:{resp_port}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::local_resp_listen;

    #[test]
    fn the_redis_door_of_local_follows_the_frontends_port() {
        let door =
            |asked: Option<&str>, listen: &str| local_resp_listen(asked.map(Into::into), listen);
        assert_eq!(
            door(None, "127.0.0.1:7000").as_deref(),
            Some("127.0.0.1:6380")
        );
        assert_eq!(
            door(None, "127.0.0.1:7100").as_deref(),
            Some("127.0.0.1:7101")
        );
        assert_eq!(door(None, "0.0.0.0:0").as_deref(), Some("0.0.0.0:0"));
        assert_eq!(door(None, "[::1]:65535").as_deref(), Some("[::1]:65534"));
        assert_eq!(door(Some("off"), "127.0.0.1:7100"), None);
        assert_eq!(
            door(Some("127.0.0.1:9999"), "127.0.0.1:7100").as_deref(),
            Some("127.0.0.1:9999")
        );
    }
}
