//! External programs in tests: free loopback ports, waiting for a listener, a child process that
//! cannot outlive its test, running a program to its end, and signalling one. Every program a
//! test drives is real (etcd, openssl, kubectl, PowerDNS); a missing one fails the test with how
//! to install it, because `make test` installs them.

use std::ffi::OsStr;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A TCP port free on 127.0.0.1 right now, drawn at random below the kernel's ephemeral range
/// (32768 and up on Linux): a port the OS hands out for `bind(0)` is also what it gives the next
/// outgoing connection, which can take it before the test binds it. It may still be taken again
/// before the test binds it (another test drawing the same port), which is rare enough for tests.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher as _, Hasher as _};
    const LOW: u64 = 20_000;
    const SPAN: u64 = 12_000;
    for _ in 0..200 {
        // RandomState's keys are random per process and differ for every instance.
        let draw = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let port = u16::try_from(LOW + draw % SPAN).unwrap_or(20_000);
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts TCP connections on `ip:port`; panics after `limit`.
pub fn wait_for_port(ip: IpAddr, port: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&(ip, port).into(), Duration::from_millis(200)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nothing listens on {ip}:{port} after {limit:?}");
}

/// The path of a program the test needs; panics with how to get it when it is missing.
pub fn require(program: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("{program} is not installed; `make test` installs it (scripts/test-deps.sh)")
    })
}

/// Runs a program to its end, bounded by `timeout(1)` (a hung client must fail the test, not
/// stall it), and returns what it printed.
pub fn run(program: &str, args: &[impl AsRef<OsStr>], limit: Duration) -> Output {
    let program = require(program);
    Command::new("timeout")
        .arg("--kill-after=2")
        .arg(limit.as_secs().to_string())
        .arg(&program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A program's exit status and output, for a failing assertion's message.
pub fn output_text(output: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Sends `signal` (`-STOP`, `-CONT`, …) to the test's own server processes `pids`: freezing a
/// server is how tests make it accept connections and never answer.
pub fn signal(pids: &[impl AsRef<OsStr> + std::fmt::Debug], signal: &str) {
    let status = Command::new("kill")
        .arg(signal)
        .args(pids)
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pids:?}");
}

/// A child process killed (SIGKILL) and reaped when dropped, so a failing test leaves no server
/// behind holding its ports.
#[derive(Debug)]
pub struct Process {
    /// The running program.
    pub child: Child,
    /// What the test calls it (a node name, `apiserver`), for messages.
    pub name: String,
}

impl Process {
    /// Starts `program` in the current directory, its output (stdout and stderr) to `log`.
    pub fn spawn(name: &str, program: &str, args: &[impl AsRef<OsStr>], log: &Path) -> Self {
        Self::spawn_in(Path::new("."), name, program, args, log)
    }

    /// Starts `program` with `dir` as its working directory, its output to `log`.
    pub fn spawn_in(
        dir: &Path,
        name: &str,
        program: &str,
        args: &[impl AsRef<OsStr>],
        log: &Path,
    ) -> Self {
        let log = fs::File::create(log).unwrap();
        let child = Command::new(require(program))
            .current_dir(dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Self {
            child,
            name: name.to_owned(),
        }
    }

    /// Starts `command` (a program the test built, say), its output to `log`.
    pub fn start(name: &str, command: &mut Command, log: &Path) -> Self {
        let log = fs::File::create(log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self {
            child,
            name: name.to_owned(),
        }
    }

    /// Kills the process at once (SIGKILL: no shutdown, no cleanup, as a crash or an OOM kill)
    /// and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the process to stop (SIGTERM) and waits up to `grace` before it is killed: some
    /// servers (etcd) shut down slowly when killed together, and quickly when asked in turn.
    pub fn stop(mut self, grace: Duration) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
