//! Real authoritative servers that take RFC 2136 updates signed with TSIG, one per test: BIND9's
//! `named` (scripts/bind.sh) or Knot DNS's `knotd` (scripts/knot.sh), each on a private loopback
//! port and directory, serving the test zone with a TSIG key the script makes.

use std::path::PathBuf;
use std::process::Command;

use crate::ZONE;
use crate::dig::dig;
use crate::process::free_port;

/// The TSIG key's name in a test server.
pub const TSIG_KEY_NAME: &str = "plinth-key";

/// Which server software.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Software {
    /// ISC BIND9 (`named`, Debian's bind9).
    Bind9,
    /// CZ.NIC Knot DNS (`knotd`, Debian's knot).
    Knot,
}

impl Software {
    /// The script that runs it, and the prefix of that script's settings.
    fn script(self) -> (&'static str, &'static str) {
        match self {
            Self::Bind9 => ("bind.sh", "PLINTH_BIND"),
            Self::Knot => ("knot.sh", "PLINTH_KNOT"),
        }
    }

    fn pid_file(self) -> &'static str {
        match self {
            Self::Bind9 => "named.pid.recorded",
            Self::Knot => "knotd.pid.recorded",
        }
    }
}

/// A server of one test's own, stopped and deleted when dropped.
#[derive(Debug)]
pub struct Rfc2136Server {
    software: Software,
    dir: PathBuf,
    /// DNS port (UDP and TCP).
    pub dns_port: u16,
}

impl Rfc2136Server {
    /// Starts a BIND9 for [`ZONE`] (named must be installed: scripts/test-deps.sh).
    pub fn bind9() -> Self {
        Self::start(Software::Bind9)
    }

    /// Starts a Knot DNS for [`ZONE`] (knotd must be installed: scripts/test-deps.sh).
    pub fn knot() -> Self {
        Self::start(Software::Knot)
    }

    /// Starts one of `software`.
    pub fn start(software: Software) -> Self {
        let dns_port = free_port();
        let server = Self {
            software,
            dir: std::env::temp_dir().join(format!(
                "plinth-{software:?}-{}-{dns_port}",
                std::process::id()
            )),
            dns_port,
        };
        server.script("start");
        server
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.dns_port)
    }

    /// The file holding the TSIG key's base64 secret.
    pub fn key_file(&self) -> PathBuf {
        self.dir.join("tsig.secret")
    }

    /// Runs the server's script with `action` (`start`, `stop`).
    pub fn script(&self, action: &str) {
        let (script, prefix) = self.software.script();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../scripts")
            .join(script);
        let output = Command::new(script)
            .arg(action)
            .env(format!("{prefix}_DIR"), &self.dir)
            .env(format!("{prefix}_PORT"), self.dns_port.to_string())
            .env(format!("{prefix}_ZONE"), ZONE)
            .env(format!("{prefix}_KEY_NAME"), TSIG_KEY_NAME)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{:?} {action}: {}",
            self.software,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The server's PID, while it runs.
    pub fn pid(&self) -> String {
        std::fs::read_to_string(self.dir.join(self.software.pid_file()))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Asks the server over DNS: the status (`NOERROR`, `NXDOMAIN`, …) and the sorted answers.
    pub fn dig(&self, name: &str, kind: &str) -> (String, Vec<String>) {
        dig(self.dns_port, name, kind)
    }
}

impl Drop for Rfc2136Server {
    fn drop(&mut self) {
        // A test that failed while the server was frozen must not leave it frozen.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join(self.software.pid_file())) {
            let _ = Command::new("kill").args(["-CONT", pid.trim()]).status();
        }
        self.script("stop");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
