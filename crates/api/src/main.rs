//! `plinth`: serve the API, apply migrations, or mint a development token.

#![allow(clippy::print_stdout)] // a command-line tool prints its results

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use plinth_api::settings::{Config, load};
use plinth_diesel_pg::PgRepo;
use plinth_domain::model::{OrgId, SecretText};

const USAGE: &str = "plinth — founds Kubernetes control planes

usage:
  plinth [--config-dir DIR] [serve]                      serve the API (the default)
  plinth [--config-dir DIR] migrate                      apply pending database migrations
  plinth [--config-dir DIR] dev-token --org ORG [--ttl TTL]
                                                         print a token signed by the local dev key
  plinth --help

Configuration: DIR/default.toml (DIR defaults to ./config, or PLINTH_CONFIG_DIR), then
DIR/$PLINTH_ENV.toml, then environment variables PLINTH__SECTION__KEY. Every key is documented
in config/default.toml. TTL is seconds, or a number with s, m, h or d (default 12h).";

enum Command {
    Serve,
    Migrate,
    DevToken { org: String, ttl: Duration },
    Help,
}

fn parse_ttl(raw: &str) -> Result<Duration, String> {
    let (number, unit) = match raw.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&raw[..i], c),
        _ => (raw, 's'),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("--ttl {raw:?} is not a duration like 3600, 30m, 12h or 7d"))?;
    let seconds = match unit {
        's' => n,
        'm' => n * 60,
        'h' => n * 3600,
        'd' => n * 86_400,
        _ => return Err(format!("--ttl {raw:?}: the unit must be s, m, h or d")),
    };
    if seconds == 0 || seconds > 30 * 86_400 {
        return Err("--ttl must be between 1 second and 30 days".into());
    }
    Ok(Duration::from_secs(seconds))
}

fn parse_args(args: &[String]) -> Result<(Option<PathBuf>, Command), String> {
    let mut config_dir = None;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--config-dir" => {
                config_dir = Some(PathBuf::from(
                    it.next().ok_or("--config-dir needs a directory")?,
                ))
            }
            "-h" | "--help" | "help" => return Ok((config_dir, Command::Help)),
            _ => rest.push(arg.as_str()),
        }
    }
    let command = match rest.as_slice() {
        [] | ["serve"] => Command::Serve,
        ["migrate"] => Command::Migrate,
        ["dev-token", options @ ..] => {
            let (mut org, mut ttl) = (None, Duration::from_secs(12 * 3600));
            let mut it = options.iter();
            while let Some(option) = it.next() {
                match *option {
                    "--org" => {
                        org = Some(
                            it.next()
                                .ok_or("--org needs an organization id")?
                                .to_string(),
                        )
                    }
                    "--ttl" => ttl = parse_ttl(it.next().ok_or("--ttl needs a duration")?)?,
                    other => return Err(format!("dev-token: unknown option {other:?}")),
                }
            }
            Command::DevToken {
                org: org.ok_or("dev-token needs --org ORG")?,
                ttl,
            }
        }
        [other, ..] => return Err(format!("unknown command {other:?}")),
    };
    Ok((config_dir, command))
}

fn config(dir: Option<PathBuf>) -> Result<Config, String> {
    let dir = dir
        .or_else(|| std::env::var_os("PLINTH_CONFIG_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("config"));
    let environment = std::env::var("PLINTH_ENV").ok().filter(|e| !e.is_empty());
    load(&dir, environment.as_deref()).map_err(|e| e.to_string())
}

async fn run(config_dir: Option<PathBuf>, command: Command) -> Result<(), String> {
    match command {
        Command::Help => {
            println!("{USAGE}");
            Ok(())
        }
        Command::Serve => {
            let config = config(config_dir)?;
            let running = plinth_api::app::start(config)
                .await
                .map_err(|e| format!("{e:#}"))?;
            running.wait().await.map_err(|e| e.to_string())
        }
        Command::Migrate => {
            let config = config(config_dir)?;
            let repo = PgRepo::new(
                &config.database,
                config.envelope().map_err(|e| e.to_string())?,
            )
            .map_err(|e| e.to_string())?;
            let applied = repo.migrate().await.map_err(|e| e.to_string())?;
            if applied.is_empty() {
                println!("the schema is up to date");
            }
            for version in applied {
                println!("applied {version}");
            }
            Ok(())
        }
        Command::DevToken { org, ttl } => {
            let config = config(config_dir)?;
            let org = OrgId::parse(&org).map_err(|e| format!("--org: {e}"))?;
            let file = config.dev_signing_key_file.ok_or(
                "auth.dev_signing_key_file is not set: dev tokens exist only for local stacks (PLINTH_ENV=dev)",
            )?;
            let key = std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let token = plinth_api::auth::mint_token(
                &SecretText::new(key),
                &config.auth.issuer,
                &config.auth.audience,
                &org,
                ttl,
            )?;
            println!("{token}");
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (config_dir, command) = match parse_args(&args) {
        Ok(parsed) => parsed,
        Err(why) => {
            eprintln!("plinth: {why}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(config_dir, command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("plinth: {why}");
            ExitCode::FAILURE
        }
    }
}
