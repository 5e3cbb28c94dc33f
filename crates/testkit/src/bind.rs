//! A real BIND9 `named` per test (scripts/bind.sh on a private loopback port and directory),
//! serving the test zone and accepting RFC 2136 updates signed with a TSIG key it makes.

use std::path::PathBuf;
use std::process::Command;

use crate::ZONE;
use crate::dig::dig;
use crate::process::free_port;

/// The TSIG key's name in a test server.
pub const BIND_KEY_NAME: &str = "plinth-key";

/// A BIND9 of one test's own, stopped and deleted when dropped.
#[derive(Debug)]
pub struct BindServer {
    dir: PathBuf,
    /// DNS port (UDP and TCP).
    pub dns_port: u16,
}

impl BindServer {
    /// Starts one for [`ZONE`] (named must be installed: scripts/test-deps.sh).
    pub fn start() -> Self {
        let dns_port = free_port();
        let server = Self {
            dir: std::env::temp_dir()
                .join(format!("plinth-bind-{}-{dns_port}", std::process::id())),
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

    /// Runs `scripts/bind.sh <action>` for this server (`start`, `stop`).
    pub fn script(&self, action: &str) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/bind.sh");
        let output = Command::new(script)
            .arg(action)
            .env("PLINTH_BIND_DIR", &self.dir)
            .env("PLINTH_BIND_PORT", self.dns_port.to_string())
            .env("PLINTH_BIND_ZONE", ZONE)
            .env("PLINTH_BIND_KEY_NAME", BIND_KEY_NAME)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "bind.sh {action}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The server's PID, while it runs.
    pub fn pid(&self) -> String {
        std::fs::read_to_string(self.dir.join("named.pid.recorded"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Asks the server over DNS: the status (`NOERROR`, `NXDOMAIN`, …) and the sorted answers.
    pub fn dig(&self, name: &str, kind: &str) -> (String, Vec<String>) {
        dig(self.dns_port, name, kind)
    }
}

impl Drop for BindServer {
    fn drop(&mut self) {
        // A test that failed while the server was frozen must not leave it frozen.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("named.pid.recorded")) {
            let _ = Command::new("kill").args(["-CONT", pid.trim()]).status();
        }
        self.script("stop");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
