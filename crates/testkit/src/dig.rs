//! `dig`, to ask a DNS server on loopback what it answers.

use std::process::Command;

/// Asks `127.0.0.1:<port>` for `name`'s `kind` records: the status (`NOERROR`, `NXDOMAIN`, …)
/// and the sorted answers.
pub fn dig(port: u16, name: &str, kind: &str) -> (String, Vec<String>) {
    let output = Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            "+tries=1",
            "+time=2",
            "+noall",
            "+comments",
            "+answer",
            name,
            kind,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no status in dig output:\n{text}"))
        .to_owned();
    let mut answers: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
        .collect();
    answers.sort();
    (status, answers)
}
