//! Child processes for the tests that run real programs: killed when dropped, waited for with a
//! bound, their output collected without risk of a pipe deadlock.

use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
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
