//! A real PowerDNS Authoritative server per test (scripts/pdns.sh on private loopback ports and
//! directory), and `dig` to ask it.

use std::path::PathBuf;
use std::process::Command;

use crate::dig::dig;
use crate::process::free_port;

/// A PowerDNS of one test's own, stopped and deleted when dropped.
#[derive(Debug)]
pub struct PowerDnsServer {
    dir: PathBuf,
    /// DNS port (UDP and TCP).
    pub dns_port: u16,
    /// HTTP API port.
    pub api_port: u16,
    /// The X-API-Key.
    pub api_key: String,
}

impl PowerDnsServer {
    /// Starts one (pdns_server must be installed: scripts/test-deps.sh).
    pub fn start() -> Self {
        let (dns_port, api_port) = (free_port(), free_port());
        let server = Self {
            dir: std::env::temp_dir()
                .join(format!("plinth-pdns-{}-{api_port}", std::process::id())),
            dns_port,
            api_port,
            api_key: format!("key-{api_port}"),
        };
        server.script("start");
        server
    }

    /// `http://127.0.0.1:<api port>`.
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// Runs `scripts/pdns.sh <action>` for this server (`start`, `stop`).
    pub fn script(&self, action: &str) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pdns.sh");
        let output = Command::new(script)
            .arg(action)
            .env("PLINTH_PDNS_DIR", &self.dir)
            .env("PLINTH_PDNS_DNS_PORT", self.dns_port.to_string())
            .env("PLINTH_PDNS_API_PORT", self.api_port.to_string())
            .env("PLINTH_PDNS_API_KEY", &self.api_key)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "pdns.sh {action}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The server's PID, while it runs.
    pub fn pid(&self) -> String {
        std::fs::read_to_string(self.dir.join("pdns.pid"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Asks the server over DNS: the status (`NOERROR`, `NXDOMAIN`, …) and the sorted answers.
    pub fn dig(&self, name: &str, kind: &str) -> (String, Vec<String>) {
        dig(self.dns_port, name, kind)
    }
}

impl Drop for PowerDnsServer {
    fn drop(&mut self) {
        // A test that failed while the server was frozen must not leave it frozen.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pdns.pid")) {
            let _ = Command::new("kill").args(["-CONT", pid.trim()]).status();
        }
        self.script("stop");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
