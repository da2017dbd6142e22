//! `kvcli`: the command-line client.
//!
//! Exit codes: 0 done (or found), 1 key not found, 2 error (server error, connection failure,
//! bad usage, test mismatch).

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use argh::FromArgs;
use ringkv::cli::{
    render_distribution, render_paper_test, render_ring, render_stats, render_top, run_paper_test,
    top_table, PaperTest,
};
use ringkv::cluster::membership::Change;
use ringkv::protocol::Status;
use ringkv::update::TimeToLive;
use ringkv::{Client, ClientOptions, Password};

const EXIT_NOT_FOUND: u8 = 1;
const EXIT_ERROR: u8 = 2;

/// kvcli: talk to a ringkv frontend. `kvcli --version` prints its version.
#[derive(FromArgs)]
struct Args {
    /// frontend address (default 127.0.0.1:7000, or $RINGKV_FRONTEND)
    #[argh(option)]
    frontend: Option<String>,
    /// seconds to wait for connecting and for each answer (default 10)
    #[argh(option, default = "10")]
    timeout: u64,
    /// file holding the password of a cluster started with --require-auth (default:
    /// $RINGKV_PASSWORD; neither: none)
    #[argh(option)]
    password_file: Option<std::path::PathBuf>,
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Command {
    Put(PutArgs),
    Get(GetArgs),
    Delete(DeleteArgs),
    Ttl(TtlArgs),
    Expire(ExpireArgs),
    Persist(PersistArgs),
    Size(SizeArgs),
    Stats(StatsArgs),
    Top(TopArgs),
    Ping(PingArgs),
    Scan(ScanArgs),
    Ring(RingArgs),
    Test(TestArgs),
    Bench(BenchArgs),
    Join(JoinArgs),
    Leave(LeaveArgs),
}

/// Add a running backend to the cluster: its share of the partitions is copied to it while the
/// cluster serves. Waits until the move is done, with a progress bar, unless --no-wait.
#[derive(FromArgs)]
#[argh(subcommand, name = "join")]
struct JoinArgs {
    /// the backend's address, exactly as the other nodes will reach it
    #[argh(positional)]
    addr: String,
    #[argh(option)]
    /// file holding the cluster token (default: $RINGKV_CLUSTER_TOKEN; neither: none)
    cluster_token_file: Option<String>,
    /// return as soon as the join has begun
    #[argh(switch)]
    no_wait: bool,
}

/// Take a backend out of the cluster: its partitions are handed off to the others first, while
/// the cluster serves. Waits until it is out, with a progress bar, unless --no-wait.
#[derive(FromArgs)]
#[argh(subcommand, name = "leave")]
struct LeaveArgs {
    /// the backend's address, as the view lists it
    #[argh(positional)]
    addr: String,
    #[argh(option)]
    /// file holding the cluster token (default: $RINGKV_CLUSTER_TOKEN; neither: none)
    cluster_token_file: Option<String>,
    /// return as soon as the leave has begun
    #[argh(switch)]
    no_wait: bool,
}

/// Store a value: from the argument, from --file, or from stdin when neither is given.
#[derive(FromArgs)]
#[argh(subcommand, name = "put")]
struct PutArgs {
    /// the key
    #[argh(positional)]
    key: String,
    /// the value
    #[argh(positional)]
    value: Option<String>,
    /// read the value from this file
    #[argh(option)]
    file: Option<String>,
    /// seconds the key lives (fractions such as 0.5 too); then it reads as not found and is
    /// removed (default: for ever)
    #[argh(option)]
    ttl: Option<f64>,
}

/// Print how long a key has left to live, in seconds (exit 1 if it is not stored).
#[derive(FromArgs)]
#[argh(subcommand, name = "ttl")]
struct TtlArgs {
    /// the key
    #[argh(positional)]
    key: String,
}

/// Give a key a time to live (exit 1 if it is not stored); 0 deletes it.
#[derive(FromArgs)]
#[argh(subcommand, name = "expire")]
struct ExpireArgs {
    /// the key
    #[argh(positional)]
    key: String,
    /// seconds it has left (fractions such as 0.5 too)
    #[argh(positional)]
    seconds: f64,
}

/// Take a key's time to live away, so that it is kept until deleted (exit 1 if it is not
/// stored or had none).
#[derive(FromArgs)]
#[argh(subcommand, name = "persist")]
struct PersistArgs {
    /// the key
    #[argh(positional)]
    key: String,
}

/// Print the value of a key (raw bytes; exit 1 if not found).
#[derive(FromArgs)]
#[argh(subcommand, name = "get")]
struct GetArgs {
    /// the key
    #[argh(positional)]
    key: String,
}

/// Remove a key (exit 1 if it was not stored).
#[derive(FromArgs)]
#[argh(subcommand, name = "delete")]
struct DeleteArgs {
    /// the key
    #[argh(positional)]
    key: String,
}

/// Keys and bytes stored per node, with the total.
#[derive(FromArgs)]
#[argh(subcommand, name = "size")]
struct SizeArgs {}

/// Every node's counters.
#[derive(FromArgs)]
#[argh(subcommand, name = "stats")]
struct StatsArgs {}

/// Check that the frontend answers, and how fast, and that a backend answers behind it (exit 2
/// if none does).
#[derive(FromArgs)]
#[argh(subcommand, name = "ping")]
struct PingArgs {}

/// Print every key (one per line), or those matching --match, walking the cluster with SCAN.
#[derive(FromArgs)]
#[argh(subcommand, name = "scan")]
struct ScanArgs {
    /// only keys matching this Redis glob pattern: `*`, `?`, `[abc]`, `[a-z]`; a backslash
    /// escapes
    #[argh(option, long = "match")]
    pattern: Option<String>,
    /// keys to aim for per step (default 1000)
    #[argh(option, default = "1000")]
    count: u32,
}

/// A live view of the cluster: per node (and in total) requests per second, keys, bytes,
/// errors and p99 latency over each interval, redrawn in place in a terminal (Ctrl-C quits).
#[derive(FromArgs)]
#[argh(subcommand, name = "top")]
struct TopArgs {
    /// seconds between refreshes (default 1; fractions such as 0.2 too)
    #[argh(option, default = "1.0")]
    interval: f64,
    /// take two samples one interval apart, print one table and exit
    #[argh(switch)]
    once: bool,
    /// stop after this many refreshes
    #[argh(option)]
    count: Option<u64>,
}

/// Show the ring: nodes, their positions or partitions, and the share of the key space each owns.
#[derive(FromArgs)]
#[argh(subcommand, name = "ring")]
struct RingArgs {}

/// The paper's test: PUT N random keys, GET them all back, compare, print the distribution.
#[derive(FromArgs)]
#[argh(subcommand, name = "test")]
struct TestArgs {
    /// number of keys (default 1000)
    #[argh(option, default = "1000")]
    count: usize,
    /// parallel client connections (default 4)
    #[argh(option, default = "4")]
    threads: usize,
    /// requests per pipelined batch (default 500)
    #[argh(option, default = "500")]
    batch: usize,
    /// seed of the random keys (default: from the clock)
    #[argh(option)]
    seed: Option<u64>,
}

/// Load generator: N clients send GETs and PUTs of random keys; prints ops/s and latency
/// percentiles (exit 2 if every request failed).
#[derive(FromArgs)]
#[argh(subcommand, name = "bench")]
struct BenchArgs {
    /// client threads, one connection each (default 50)
    #[argh(option, default = "50")]
    clients: usize,
    /// requests in all (default 100000)
    #[argh(option, default = "100_000")]
    requests: u64,
    /// run for this many seconds instead of a number of requests
    #[argh(option)]
    duration: Option<f64>,
    /// requests each client sends before reading their answers (default 1)
    #[argh(option, default = "1")]
    pipeline: usize,
    /// bytes of each PUT's value (default 32)
    #[argh(option, default = "32")]
    value_size: usize,
    /// keys are key:000000000000 up to this many, drawn uniformly (default 100000)
    #[argh(option, default = "100_000")]
    keyspace: u64,
    /// get, put, or the fraction of GETs such as 0.9 (default 0.5)
    #[argh(option, default = "ringkv::loadgen::Mix::HALF")]
    mix: ringkv::loadgen::Mix,
    /// PUT every key once before measuring, so that GETs find values
    #[argh(switch)]
    preload: bool,
    /// print one JSON object instead of the table
    #[argh(switch)]
    json: bool,
    /// no progress bar
    #[argh(switch)]
    no_progress: bool,
}

fn bench(
    addr: &str,
    options: ClientOptions,
    b: BenchArgs,
) -> Result<u8, Box<dyn std::error::Error>> {
    let duration = b
        .duration
        .map(|secs| {
            Duration::try_from_secs_f64(secs)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    format!("--duration must be a positive number of seconds, not {secs}")
                })
        })
        .transpose()?;
    let config = ringkv::loadgen::BenchConfig {
        clients: b.clients,
        requests: b.requests,
        duration,
        pipeline: b.pipeline,
        value_size: b.value_size,
        keyspace: b.keyspace,
        mix: b.mix,
        preload: b.preload,
        progress: !b.no_progress && !b.json && std::io::stderr().is_terminal(),
        seed: None,
    };
    let outcome = ringkv::loadgen::run(addr, &config, options)?;
    if b.json {
        println!("{}", ringkv::loadgen::render_json(&outcome));
    } else {
        print!("{}", ringkv::loadgen::render_text(&outcome));
    }
    if outcome.all_failed() {
        let why = outcome.failures.first().map_or("", String::as_str);
        eprintln!(
            "kvcli: bench: every request failed ({} of {}): {why}",
            outcome.errors(),
            outcome.requests()
        );
        return Ok(EXIT_ERROR);
    }
    if outcome.errors() > 0 {
        eprintln!(
            "kvcli: bench: {} of {} requests failed",
            outcome.errors(),
            outcome.requests()
        );
    }
    Ok(0)
}

/// `kvcli join` and `kvcli leave`: begins the change, then follows it to its end.
fn change_membership(
    addr: &str,
    options: ClientOptions,
    change: Change,
    token_file: Option<String>,
    no_wait: bool,
) -> Result<u8, Box<dyn std::error::Error>> {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let token = ringkv::cluster::token::ClusterToken::load(token_file.as_deref().map(Path::new))?;
    let mut client = Client::connect_with(addr, options)?;
    if let Some(token) = token {
        client = client.with_cluster_token(token)?;
    }
    let before = client.change_progress(&change, u64::MAX)?;
    let begun = match &change {
        Change::Join(node) => client.join(node)?,
        Change::Leave(node) => client.leave(node)?,
    };
    println!("the {change} has begun in view epoch {begun}");
    if no_wait {
        return Ok(0);
    }
    let started = Instant::now();
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} partitions copied, {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    // The view is looked at often; the counters (a pass over every backend's keys) seldom.
    let mut counted = (0, 0);
    let mut next_count = Instant::now();
    let outcome = loop {
        if let Some(outcome) = client.change_outcome(&change, begun)? {
            break outcome;
        }
        if Instant::now() >= next_count {
            let progress = client.change_progress(&change, begun)?;
            let keys = progress.keys_copied.saturating_sub(before.keys_copied);
            let bytes = progress.bytes_copied.saturating_sub(before.bytes_copied);
            counted = (keys, bytes);
            let rate = bytes as f64 / started.elapsed().as_secs_f64().max(1e-3);
            bar.set_length(progress.partitions_planned.max(1));
            bar.set_position(progress.partitions_copied);
            bar.set_message(format!(
                "{keys} keys, {} copied ({}/s), view epoch {}",
                human_bytes(bytes as f64),
                human_bytes(rate),
                progress.epoch
            ));
            next_count = Instant::now() + Duration::from_secs(2);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    bar.finish_and_clear();
    let after = client.change_progress(&change, begun)?;
    let keys = after
        .keys_copied
        .saturating_sub(before.keys_copied)
        .max(counted.0);
    let bytes = after
        .bytes_copied
        .saturating_sub(before.bytes_copied)
        .max(counted.1);
    match outcome {
        Ok(()) => {
            println!(
                "the {change} is done: {keys} keys ({}) copied in {:.1?}",
                human_bytes(bytes as f64),
                started.elapsed()
            );
            Ok(0)
        }
        Err(why) => {
            eprintln!("kvcli: {why}");
            Ok(EXIT_ERROR)
        }
    }
}

/// What `kvcli size` and `kvcli ring` add while a join or leave runs: the partitions changing
/// hands (from the view), the keys and bytes the backends have copied, and the rate, from two
/// looks at their counters a second apart. Empty when no move is under way.
fn move_in_progress(client: &mut Client) -> Result<String, Box<dyn std::error::Error>> {
    let ring = ringkv::Ring::new(client.view()?)?;
    if !ring.view().is_moving() {
        return Ok(String::new());
    }
    let mut copied = || -> Result<(u64, u64), Box<dyn std::error::Error>> {
        let stats = client.stats()?;
        let sum = |name: &str| -> u64 {
            stats
                .iter()
                .filter(|r| r.addr != "total")
                .map(|r| r.counter(name))
                .sum()
        };
        Ok((sum("handoff_keys"), sum("handoff_bytes")))
    };
    let (keys, bytes) = copied()?;
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let (keys_later, bytes_later) = copied()?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(format!(
        "{}copied so far: {keys_later} keys, {}; now {:.0} keys/s, {}/s\n",
        ringkv::cli::render_move(&ring),
        human_bytes(bytes_later as f64),
        keys_later.saturating_sub(keys) as f64 / seconds,
        human_bytes(bytes_later.saturating_sub(bytes) as f64 / seconds)
    ))
}

/// The ANSI sequences of `kvcli top`'s view in a terminal.
const CLEAR_SCREEN: &str = "\x1b[2J";
const CURSOR_HOME: &str = "\x1b[H";
const CLEAR_TO_END_OF_LINE: &str = "\x1b[K";
const CLEAR_BELOW: &str = "\x1b[J";
const HIDE_CURSOR: &str = "\x1b[?25l";
const SHOW_CURSOR: &str = "\x1b[?25h";

/// Where `kvcli top` shows its tables.
enum TopOutput {
    /// A terminal: each table drawn over the last, the cursor hidden meanwhile and shown again
    /// when this is dropped or on Ctrl-C.
    Redrawn,
    /// Anything else: the tables one after the other, a blank line between two.
    Appended { tables: u64 },
}

impl TopOutput {
    /// Takes over the terminal: hides the cursor and clears the screen, and makes Ctrl-C
    /// give the cursor back and exit 0.
    fn redrawn() -> Result<TopOutput, Box<dyn std::error::Error>> {
        // The handler ends kvcli itself: Ctrl-C may come while the main thread waits on the
        // cluster for up to --timeout seconds, and should not have to wait for it.
        ctrlc::set_handler(|| {
            let mut stdout = std::io::stdout().lock();
            let _ = write!(stdout, "{SHOW_CURSOR}");
            let _ = stdout.flush();
            std::process::exit(0);
        })
        .map_err(|e| format!("cannot install the Ctrl-C handler: {e}"))?;
        let mut stdout = std::io::stdout().lock();
        write!(stdout, "{HIDE_CURSOR}{CLEAR_SCREEN}")?;
        stdout.flush()?;
        Ok(TopOutput::Redrawn)
    }

    fn show(&mut self, text: &str) -> std::io::Result<()> {
        let mut stdout = std::io::stdout().lock();
        match self {
            TopOutput::Redrawn => {
                // Over the last table line by line, rather than clearing first, so that the
                // view does not flicker.
                write!(stdout, "{CURSOR_HOME}")?;
                for line in text.lines() {
                    writeln!(stdout, "{line}{CLEAR_TO_END_OF_LINE}")?;
                }
                write!(stdout, "{CLEAR_BELOW}")?;
            }
            TopOutput::Appended { tables } => {
                if *tables > 0 {
                    writeln!(stdout)?;
                }
                write!(stdout, "{text}")?;
                *tables += 1;
            }
        }
        stdout.flush()
    }
}

impl Drop for TopOutput {
    fn drop(&mut self) {
        if let TopOutput::Redrawn = self {
            let mut stdout = std::io::stdout().lock();
            let _ = write!(stdout, "{SHOW_CURSOR}");
            let _ = stdout.flush();
        }
    }
}

/// `kvcli top`: a STATS every interval, and the table of what each node did in between.
fn top(addr: &str, options: ClientOptions, t: TopArgs) -> Result<u8, Box<dyn std::error::Error>> {
    let interval = Duration::try_from_secs_f64(t.interval)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            format!(
                "--interval must be a positive number of seconds, not {}",
                t.interval
            )
        })?;
    let refreshes = match (t.once, t.count) {
        (true, Some(_)) => return Err("give --once or --count, not both".into()),
        (_, Some(0)) => return Err("--count must be at least 1".into()),
        (true, None) => Some(1),
        (false, count) => count,
    };
    let mut client = Client::connect_with(addr, options)?;
    let redraw = !t.once && std::io::stdout().is_terminal();
    let mut output = if redraw {
        TopOutput::redrawn()?
    } else {
        TopOutput::Appended { tables: 0 }
    };
    let quit = if redraw { " (Ctrl-C quits)" } else { "" };
    if redraw {
        output.show(&format!(
            "kvcli top: {addr}{quit}: the first figures come in {}s",
            t.interval
        ))?;
    }
    let mut earlier = client.stats()?;
    let mut earlier_at = Instant::now();
    // Each node that did not answer at some refresh, with why, to name when kvcli ends.
    let mut did_not_answer: Vec<(String, String)> = Vec::new();
    let mut shown = 0u64;
    loop {
        std::thread::sleep((earlier_at + interval).saturating_duration_since(Instant::now()));
        let later = client.stats()?;
        let later_at = Instant::now();
        let seconds = later_at.duration_since(earlier_at).as_secs_f64();
        let table = top_table(&earlier, &later, seconds);
        for row in table.missing() {
            if !did_not_answer.iter().any(|(node, _)| *node == row.node) {
                let why = row.failure.clone().unwrap_or_default();
                did_not_answer.push((row.node.clone(), why));
            }
        }
        output.show(&format!(
            "kvcli top: {addr}{quit}: the last {seconds:.2}s\n{}",
            render_top(&table)
        ))?;
        shown += 1;
        if refreshes.is_some_and(|n| shown >= n) {
            break;
        }
        earlier = later;
        earlier_at = later_at;
    }
    drop(output);
    // A table with a node missing is not the cluster's figure.
    for (node, why) in &did_not_answer {
        eprintln!("kvcli: node {node} did not answer: {why}");
    }
    Ok(if did_not_answer.is_empty() {
        0
    } else {
        EXIT_ERROR
    })
}

/// Bytes in B, KiB, MiB or GiB.
fn human_bytes(bytes: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", units[unit])
}

/// A count of seconds given on the command line, as a duration; `what` names it in the error.
fn seconds_arg(seconds: f64, what: &str) -> Result<Duration, String> {
    if !seconds.is_finite() || !(0.0..=1e12).contains(&seconds) {
        return Err(format!(
            "{what} must be a number of seconds from 0 on, got {seconds}"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn main() -> ExitCode {
    let args: Args = ringkv::cli::parse_args();
    let addr = ringkv::cli::frontend_address(args.frontend);
    let password = match Password::load(args.password_file.as_deref()) {
        Ok(password) => password,
        Err(e) => {
            eprintln!("kvcli: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let options = ClientOptions {
        connect_timeout: Duration::from_secs(args.timeout.max(1)),
        io_timeout: Duration::from_secs(args.timeout.max(1)),
        password,
        ..ClientOptions::default()
    };
    match run(&addr, options, args.command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // Bytes of another protocol are worth saying so, not "bad frame".
            let foreign = e
                .downcast_ref::<ringkv::Error>()
                .and_then(ringkv::client::not_a_ringkv_server);
            eprintln!("kvcli: {}", foreign.unwrap_or_else(|| e.to_string()));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn run(
    addr: &str,
    options: ClientOptions,
    command: Command,
) -> Result<u8, Box<dyn std::error::Error>> {
    if let Command::Bench(b) = command {
        return bench(addr, options, b);
    }
    if let Command::Test(t) = command {
        let test = PaperTest {
            count: t.count,
            threads: t.threads,
            batch: t.batch,
            seed: t
                .seed
                .unwrap_or_else(|| ringkv::rng::Rng::from_entropy().next_u64()),
        };
        let outcome = run_paper_test(addr, &test, options)?;
        print!("{}", render_paper_test(&outcome));
        return Ok(if outcome.passed() { 0 } else { EXIT_ERROR });
    }
    if let Command::Top(t) = command {
        return top(addr, options, t);
    }
    if let Command::Join(j) = command {
        let change = Change::Join(j.addr);
        return change_membership(addr, options, change, j.cluster_token_file, j.no_wait);
    }
    if let Command::Leave(l) = command {
        let change = Change::Leave(l.addr);
        return change_membership(addr, options, change, l.cluster_token_file, l.no_wait);
    }
    let mut client = Client::connect_with(addr, options)?;
    let mut stdout = std::io::stdout().lock();
    let is_size = matches!(command, Command::Size(_));
    match command {
        Command::Put(p) => {
            let value = match (p.value, p.file) {
                (Some(_), Some(_)) => return Err("give the value or --file, not both".into()),
                (Some(value), None) => value.into_bytes(),
                (None, Some(path)) => {
                    std::fs::read(&path).map_err(|e| format!("cannot read {path}: {e}"))?
                }
                (None, None) => {
                    if std::io::stdin().is_terminal() {
                        return Err(
                            "give a value, --file PATH, or pipe the value in on stdin".into()
                        );
                    }
                    let mut value = Vec::new();
                    std::io::stdin().read_to_end(&mut value)?;
                    value
                }
            };
            match p.ttl {
                Some(seconds) => {
                    let ttl = seconds_arg(seconds, "--ttl")?;
                    if ttl.is_zero() {
                        return Err("--ttl must be above 0".into());
                    }
                    client.put_with_ttl(p.key.as_bytes(), &value, ttl)?
                }
                None => client.put(p.key.as_bytes(), &value)?,
            }
            writeln!(stdout, "OK")?;
        }
        Command::Ttl(t) => match client.ttl(t.key.as_bytes())? {
            TimeToLive::Absent => {
                eprintln!("kvcli: {} not found", t.key);
                return Ok(EXIT_NOT_FOUND);
            }
            TimeToLive::Forever => writeln!(stdout, "never expires")?,
            TimeToLive::Left { ms, .. } => writeln!(stdout, "{:.3} s", ms as f64 / 1000.0)?,
        },
        Command::Expire(e) => {
            let ttl = seconds_arg(e.seconds, "the seconds")?;
            if client.expire(e.key.as_bytes(), ttl)? {
                writeln!(stdout, "OK")?;
            } else {
                eprintln!("kvcli: {} not found", e.key);
                return Ok(EXIT_NOT_FOUND);
            }
        }
        Command::Persist(p) => {
            if client.persist(p.key.as_bytes())? {
                writeln!(stdout, "OK")?;
            } else {
                eprintln!("kvcli: {} is not stored or has no time to live", p.key);
                return Ok(EXIT_NOT_FOUND);
            }
        }
        Command::Get(g) => match client.get(g.key.as_bytes())? {
            Some(value) => {
                stdout.write_all(&value)?;
                if stdout.is_terminal() {
                    writeln!(stdout)?;
                }
            }
            None => {
                eprintln!("kvcli: {} not found", g.key);
                return Ok(EXIT_NOT_FOUND);
            }
        },
        Command::Delete(d) => {
            if client.delete(d.key.as_bytes())? {
                writeln!(stdout, "deleted")?;
            } else {
                eprintln!("kvcli: {} not found", d.key);
                return Ok(EXIT_NOT_FOUND);
            }
        }
        Command::Size(_) | Command::Stats(_) => {
            let (reports, table) = if is_size {
                let reports = client.size()?;
                let table = render_distribution(&reports);
                (reports, table)
            } else {
                let reports = client.stats()?;
                let table = render_stats(&reports);
                (reports, table)
            };
            write!(stdout, "{table}")?;
            write!(stdout, "{}", move_in_progress(&mut client)?)?;
            stdout.flush()?;
            // A table with a node missing is not the cluster's figure.
            if let Some(missing) = reports.iter().find(|r| r.status != Status::OK) {
                eprintln!(
                    "kvcli: node {} did not answer: {}: {}",
                    missing.addr, missing.status, missing.message
                );
                return Ok(EXIT_ERROR);
            }
        }
        Command::Ring(_) => {
            write!(stdout, "{}", render_ring(&client.view()?)?)?;
            write!(stdout, "{}", move_in_progress(&mut client)?)?;
        }
        Command::Ping(_) => {
            let rtt = client.ping()?;
            writeln!(stdout, "PONG from {addr} in {rtt:.2?}")?;
            stdout.flush()?;
            // A frontend answers PING itself, backends or none: a SIZE asks every backend.
            let reports = client.size()?;
            let backends: Vec<_> = reports.iter().filter(|r| r.addr != "total").collect();
            let silent: Vec<String> = backends
                .iter()
                .filter(|r| r.status != Status::OK)
                .map(|r| format!("{}: {}: {}", r.addr, r.status, r.message))
                .collect();
            if !silent.is_empty() && silent.len() == backends.len() {
                eprintln!(
                    "kvcli: {addr} answers, but none of its {} backend(s) does: {}",
                    backends.len(),
                    silent.join("; ")
                );
                return Ok(EXIT_ERROR);
            }
            if !silent.is_empty() {
                eprintln!(
                    "kvcli: note: {} of {} backends did not answer: {}",
                    silent.len(),
                    backends.len(),
                    silent.join("; ")
                );
            }
        }
        Command::Scan(s) => {
            let pattern = s.pattern.unwrap_or_default();
            // Step by step, so that keys are printed as they come; a view change restarts
            // the walk, which would print keys twice: refuse instead.
            let mut cursor = 0;
            loop {
                let (next, keys) = client.scan(cursor, s.count.max(1), pattern.as_bytes())?;
                for key in keys {
                    stdout.write_all(&key)?;
                    stdout.write_all(b"\n")?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Command::Test(_)
        | Command::Bench(_)
        | Command::Join(_)
        | Command::Leave(_)
        | Command::Top(_) => {
            unreachable!("handled above")
        }
    }
    stdout.flush()?;
    Ok(0)
}
