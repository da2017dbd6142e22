//! Child processes for the tests that run real programs: killed when dropped, waited for with a
//! bound, their output collected without risk of a pipe deadlock.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A child process that is killed when dropped, so that a failing test leaves nothing running.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for `child` to exit, at most `bound`.
pub fn wait_bounded(child: &mut Child, bound: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child process") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What a finished process left behind.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Standard output as text (lossily).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

impl std::fmt::Debug for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} after {:.2?}\n--- stdout\n{}--- stderr\n{}",
            self.status,
            self.elapsed,
            self.text(),
            self.stderr
        )
    }
}

fn read_to_end_in_background(mut pipe: impl Read + Send + 'static) -> Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        let _ = tx.send(bytes);
    });
    rx
}

/// Runs `command` with `stdin` as its input and waits for it to finish, at most `bound`; a
/// process still running then is killed and the test fails. `$RINGKV_FRONTEND` is removed from
/// its environment unless the command sets it, so the caller's shell cannot change a test.
pub fn run_bounded(command: &mut Command, stdin: &[u8], bound: Duration) -> Finished {
    let what = format!("{command:?}");
    if !command
        .get_envs()
        .any(|(name, _)| name == "RINGKV_FRONTEND")
    {
        command.env_remove("RINGKV_FRONTEND");
    }
    let started = Instant::now();
    let mut guard = ChildGuard(
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}")),
    );
    let mut input = guard.0.stdin.take().expect("stdin is piped");
    let input_bytes = stdin.to_vec();
    // A separate writer, so that a child that writes much before reading cannot deadlock us.
    std::thread::spawn(move || {
        let _ = input.write_all(&input_bytes);
    });
    let stdout = read_to_end_in_background(guard.0.stdout.take().expect("stdout is piped"));
    let stderr = read_to_end_in_background(guard.0.stderr.take().expect("stderr is piped"));
    let status = wait_bounded(&mut guard.0, bound)
        .unwrap_or_else(|| panic!("{what} did not finish within {bound:?}; killed it"));
    let elapsed = started.elapsed();
    let collect = |rx: Receiver<Vec<u8>>| {
        rx.recv_timeout(bound)
            .unwrap_or_else(|_| panic!("{what} exited but its output stayed open"))
    };
    let stdout = collect(stdout);
    let stderr = String::from_utf8_lossy(&collect(stderr)).into_owned();
    Finished {
        status,
        stdout,
        stderr,
        elapsed,
    }
}

/// A running `ringkv` process, killed when dropped so that a failing test leaves nothing
/// running. Its stdout lines arrive on a channel; its log (stderr) is kept for failure messages.
pub struct Server {
    child: ChildGuard,
    lines: Receiver<String>,
    log: Arc<Mutex<Vec<u8>>>,
}

impl Server {
    /// Starts `ringkv` with `args`.
    pub fn start(args: &[&str]) -> Server {
        Server::start_program(std::path::Path::new(env!("CARGO_BIN_EXE_ringkv")), args)
    }

    /// Starts `program` (a binary or an example that prints `{role} listening on ADDR` lines)
    /// with `args`.
    pub fn start_program(program: &std::path::Path, args: &[&str]) -> Server {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} {args:?}: {e}", program.display()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = stderr.read(&mut chunk) {
                sink.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        Server {
            child: ChildGuard(child),
            lines,
            log,
        }
    }

    /// Waits for the next stdout line, which must read `{role} listening on ADDR`, and returns
    /// ADDR.
    pub fn listening(&self, role: &str) -> String {
        let line = self.lines.recv_timeout(super::BOUND).unwrap_or_else(|_| {
            panic!(
                "no `{role} listening on` line within {:?}; log:\n{}",
                super::BOUND,
                self.log()
            )
        });
        line.strip_prefix(&format!("{role} listening on "))
            .unwrap_or_else(|| panic!("expected `{role} listening on ADDR`, got {line:?}"))
            .to_string()
    }

    /// What the process wrote to stderr so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().unwrap()).into_owned()
    }

    /// Sends SIGTERM and returns the exit status, which must come within a few seconds.
    pub fn terminate(&mut self) -> ExitStatus {
        let kill = Command::new("kill")
            .args(["-TERM", &self.child.0.id().to_string()])
            .status()
            .expect("running kill");
        assert!(kill.success(), "kill -TERM failed: {kill}");
        wait_bounded(&mut self.child.0, Duration::from_secs(5)).unwrap_or_else(|| {
            panic!(
                "ringkv did not exit within 5 s of SIGTERM; log:\n{}",
                self.log()
            )
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) and waits for `kill` to have delivered it.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("running kill");
        assert!(sent.success(), "kill -{signal} failed: {sent}");
        if signal == "STOP" {
            self.wait_until_stopped();
        }
    }

    /// `kill` returns once a signal is pending, not once it has taken effect: a thread that is
    /// running may still serve a request before it stops. Waits until every thread of the
    /// process is in the stopped state, as /proc reports it.
    fn wait_until_stopped(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let tasks = format!("/proc/{}/task", self.pid());
        loop {
            let all_stopped = std::fs::read_dir(&tasks)
                .map(|entries| {
                    entries.flatten().all(|task| {
                        std::fs::read_to_string(task.path().join("stat"))
                            .ok()
                            .and_then(|stat| {
                                // The state follows the command name's closing parenthesis.
                                let rest = &stat[stat.rfind(')')? + 1..];
                                rest.split_whitespace().next().map(|s| s == "T" || s == "t")
                            })
                            .unwrap_or(true)
                    })
                })
                .unwrap_or(false);
            if all_stopped {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "process {} did not stop",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// kill -9, waited for, keeping the handle (and its log).
    pub fn kill_now(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
    }

    /// kill -9, waited for.
    pub fn kill(mut self) {
        self.child.0.kill().unwrap();
        self.child.0.wait().unwrap();
    }
}

/// Two `ringkv backend` processes and a `ringkv frontend` process in front of them, each its
/// own process so that a test can kill one backend.
pub struct TwoBackends {
    pub backends: [Server; 2],
    pub backend_addrs: [String; 2],
    pub frontend: Server,
    /// The frontend's address.
    pub addr: String,
}

impl TwoBackends {
    pub fn start() -> TwoBackends {
        let first = Server::start(&["backend", "--listen", "127.0.0.1:0"]);
        let second = Server::start(&["backend", "--listen", "127.0.0.1:0"]);
        let backend_addrs = [first.listening("backend"), second.listening("backend")];
        let frontend = Server::start(&[
            "frontend",
            "--listen",
            "127.0.0.1:0",
            &backend_addrs[0],
            &backend_addrs[1],
        ]);
        let addr = frontend.listening("frontend");
        TwoBackends {
            backends: [first, second],
            backend_addrs,
            frontend,
            addr,
        }
    }
}

/// `ringkv local` with three backends, as a process: the server, the frontend's address and
/// the backends'.
pub fn local_cluster() -> (Server, String, Vec<String>) {
    let server = Server::start(&["local", "--backends", "3", "--listen", "127.0.0.1:0"]);
    let frontend = server.listening("frontend");
    server.listening("resp");
    let backends = (0..3).map(|_| server.listening("backend")).collect();
    (server, frontend, backends)
}

/// `ringkv local` with one backend holding one copy of each key, as a process, with `extra`
/// arguments.
pub fn one_backend_local(extra: &[&str]) -> Server {
    let mut args = vec![
        "local",
        "--backends",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--replicas",
        "1",
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}
