//! Loads `key<TAB>value` lines into ringkv with pipelined PUTs.
//!
//! ```sh
//! cargo run --release --example bulk_load -- [--frontend ADDR] FILE [--verify] [--batch N]
//! ```
//!
//! FILE may be `-` for stdin. A line is split at its first tab: the key is what comes before it,
//! the value everything after it, bytes as they are (further tabs included). A line with no tab
//! or an empty key is reported with its line number and skipped. Lines end with `\n`; a `\r`
//! before it is dropped too, so files written on Windows load as intended.
//!
//! `--verify` reads every key back once all lines are loaded and compares it with the value of
//! the key's last line; it keeps the loaded data in memory to do so. The exit status is non-zero
//! when a PUT is refused, a value does not come back, or the file or the frontend fails.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::process::ExitCode;
use std::time::Instant;

use argh::FromArgs;
use ringkv::{Client, Request};

/// Load key<TAB>value lines into ringkv.
#[derive(FromArgs)]
struct Args {
    /// frontend address (default 127.0.0.1:7000, or $RINGKV_FRONTEND)
    #[argh(option)]
    frontend: Option<String>,
    /// PUTs sent per pipelined batch (default 500)
    #[argh(option, default = "500")]
    batch: usize,
    /// read every key back afterwards and compare
    #[argh(switch)]
    verify: bool,
    /// file of key<TAB>value lines, or - for stdin
    #[argh(positional)]
    file: Option<String>,
}

type Failure = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    let (args, stdin) = parse_args();
    match run(&args, stdin) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bulk_load: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Parses the command line. argh takes a lone `-` for a flag, so it is picked out first and
/// means "read stdin".
fn parse_args() -> (Args, bool) {
    let mut words: Vec<String> = std::env::args().collect();
    let dash = words.iter().skip(1).position(|w| w == "-");
    if let Some(i) = dash {
        words.remove(i + 1);
    }
    (ringkv::cli::parse_words(words), dash.is_some())
}

fn run(args: &Args, stdin: bool) -> Result<bool, Failure> {
    let (name, input): (&str, Box<dyn BufRead>) = match (&args.file, stdin) {
        (Some(_), true) => return Err("give FILE or -, not both".into()),
        (None, false) => return Err("no input: give FILE, or - for stdin".into()),
        (None, true) => ("stdin", Box::new(io::stdin().lock())),
        (Some(path), false) => {
            let file = File::open(path).map_err(|e| format!("cannot open {path}: {e}"))?;
            (path.as_str(), Box::new(BufReader::new(file)))
        }
    };
    if args.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    let addr = ringkv::cli::frontend_address(args.frontend.clone());
    let mut client = Client::connect(&addr)?;

    let started = Instant::now();
    let mut loader = Loader {
        client: &mut client,
        verify: args.verify,
        batch_size: args.batch,
        batch: Vec::with_capacity(args.batch),
        lines: Vec::with_capacity(args.batch),
        loaded: 0,
        refused: 0,
        stored: BTreeMap::new(),
    };
    let mut malformed = 0u64;
    for (index, line) in input.split(b'\n').enumerate() {
        let line = line.map_err(|e| format!("cannot read {name}: {e}"))?;
        let number = index as u64 + 1;
        match parse_line(&line) {
            Ok((key, value)) => {
                loader.push(number, key.to_vec(), value.to_vec())?;
            }
            Err(why) => {
                malformed += 1;
                eprintln!("line {number}: {why}, skipped");
            }
        }
    }
    loader.flush()?;
    let elapsed = started.elapsed();
    let (loaded, refused, stored) = (loader.loaded, loader.refused, loader.stored);
    println!(
        "loaded {loaded} lines from {name} in {elapsed:.2?} ({:.0} lines/s); \
         {malformed} malformed lines skipped; {refused} refused",
        loaded as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    let verified = !args.verify || verify(&mut client, &stored, args.batch)?;
    Ok(refused == 0 && verified)
}

/// Splits a line at its first tab, after dropping a line-ending `\r`.
fn parse_line(line: &[u8]) -> Result<(&[u8], &[u8]), &'static str> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let tab = line
        .iter()
        .position(|&b| b == b'\t')
        .ok_or("no tab between key and value")?;
    if tab == 0 {
        return Err("empty key");
    }
    Ok((&line[..tab], &line[tab + 1..]))
}

/// PUTs lines in pipelined batches and keeps what it needs for the report and the verify pass.
struct Loader<'a> {
    client: &'a mut Client,
    verify: bool,
    batch_size: usize,
    batch: Vec<Request>,
    /// The line number of each request in `batch`.
    lines: Vec<u64>,
    loaded: u64,
    refused: u64,
    /// Each key's last stored value, kept only with --verify.
    stored: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Loader<'_> {
    /// Queues a PUT, sending the batch once it is full.
    fn push(&mut self, line: u64, key: Vec<u8>, value: Vec<u8>) -> Result<(), Failure> {
        self.batch.push(Request::Put { key, value });
        self.lines.push(line);
        if self.batch.len() < self.batch_size {
            return Ok(());
        }
        self.flush()
    }

    fn flush(&mut self) -> Result<(), Failure> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let replies = self.client.pipeline(&self.batch)?;
        for ((request, line), reply) in self.batch.drain(..).zip(self.lines.drain(..)).zip(replies)
        {
            let Request::Put { key, value } = request else {
                unreachable!("the loader only sends PUTs")
            };
            match reply.into_result() {
                Ok(_) => {
                    self.loaded += 1;
                    if self.verify {
                        self.stored.insert(key, value);
                    }
                }
                Err(e) => {
                    self.refused += 1;
                    eprintln!("line {line}: PUT {} refused: {e}", key.escape_ascii());
                }
            }
        }
        Ok(())
    }
}

/// GETs every stored key and compares; true when all match.
fn verify(
    client: &mut Client,
    stored: &BTreeMap<Vec<u8>, Vec<u8>>,
    batch: usize,
) -> Result<bool, Failure> {
    const SHOWN: usize = 10;
    let started = Instant::now();
    let entries: Vec<(&Vec<u8>, &Vec<u8>)> = stored.iter().collect();
    let mut wrong = 0usize;
    for part in entries.chunks(batch) {
        let requests: Vec<Request> = part
            .iter()
            .map(|(key, _)| Request::Get { key: key.to_vec() })
            .collect();
        for ((key, expected), reply) in part.iter().zip(client.pipeline(&requests)?) {
            let problem = match reply.into_result() {
                Ok(Some(value)) if &value == *expected => continue,
                Ok(Some(value)) => format!(
                    "expected {} bytes, got {} bytes that differ",
                    expected.len(),
                    value.len()
                ),
                Ok(None) => "not found".to_string(),
                Err(e) => e.to_string(),
            };
            wrong += 1;
            if wrong <= SHOWN {
                eprintln!("verify: {}: {problem}", key.escape_ascii());
            }
        }
    }
    if wrong == 0 {
        println!(
            "verified {} keys in {:.2?}: all match",
            stored.len(),
            started.elapsed()
        );
    } else {
        println!("verify FAILED: {wrong} of {} keys differ", stored.len());
    }
    Ok(wrong == 0)
}
