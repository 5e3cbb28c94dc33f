//! `plinth`: serve the API, apply migrations, or mint a development token.

#![allow(clippy::print_stdout)] // a command-line tool prints its results

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use plinth_api::wiring::settings::{Config, load};
use plinth_domain::model::{OrgId, SecretText};

/// plinth founds Kubernetes control planes.
///
/// Configuration: DIR/default.toml, then DIR/$PLINTH_ENV.toml, then environment variables
/// PLINTH__SECTION__KEY. Every key is documented in config/default.toml.
#[derive(Debug, Parser)]
#[command(name = "plinth", version)]
struct Cli {
    /// The configuration directory.
    #[arg(
        long,
        global = true,
        env = "PLINTH_CONFIG_DIR",
        default_value = "config"
    )]
    config_dir: PathBuf,
    /// The environment whose DIR/<ENV>.toml is read after default.toml (e.g. dev).
    #[arg(long, global = true, env = "PLINTH_ENV")]
    env: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Apply pending database migrations, then exit.
    Migrate,
    /// Print a token for ORG signed by the local development key (`auth.dev_signing_key_file`,
    /// set by config/dev.toml: run with `--env dev` or PLINTH_ENV=dev).
    DevToken {
        /// The organization the token acts for.
        #[arg(long)]
        org: String,
        /// How long it works: seconds, or a number with s, m, h or d (at most 30d).
        #[arg(long, default_value = "12h", value_parser = parse_ttl)]
        ttl: Duration,
    },
    /// Print the JWKS (RFC 7517) of the local development key's public half, as an identity
    /// provider publishes its keys (`auth.jwks_file` or `auth.jwks_url` can then serve it).
    DevJwks,
}

fn parse_ttl(raw: &str) -> Result<Duration, String> {
    let (number, unit) = match raw.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&raw[..i], c),
        _ => (raw, 's'),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{raw:?} is not a duration like 3600, 30m, 12h or 7d"))?;
    let seconds = match unit {
        's' => n,
        'm' => n.saturating_mul(60),
        'h' => n.saturating_mul(3600),
        'd' => n.saturating_mul(86_400),
        _ => return Err(format!("{raw:?}: the unit must be s, m, h or d")),
    };
    if seconds == 0 || seconds > 30 * 86_400 {
        return Err("must be between 1 second and 30 days".into());
    }
    Ok(Duration::from_secs(seconds))
}

fn config(cli: &Cli) -> Result<Config, String> {
    let environment = cli.env.as_deref().filter(|e| !e.is_empty());
    load(&cli.config_dir, environment).map_err(|e| e.to_string())
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.command.as_ref().unwrap_or(&Command::Serve) {
        Command::Serve => {
            let running = plinth_api::wiring::start(config(&cli)?)
                .await
                .map_err(|e| format!("{e:#}"))?;
            running.wait().await.map_err(|e| e.to_string())
        }
        Command::Migrate => {
            let applied = plinth_api::wiring::migrate(&config(&cli)?)
                .await
                .map_err(|e| format!("{e:#}"))?;
            if applied.is_empty() {
                println!("the schema is up to date");
            }
            for version in applied {
                println!("applied {version}");
            }
            Ok(())
        }
        Command::DevToken { org, ttl } => {
            let config = config(&cli)?;
            let org = OrgId::parse(org).map_err(|e| format!("--org: {e}"))?;
            if ttl.as_secs() > config.auth.max_token_lifetime_secs {
                return Err(format!(
                    "--ttl: {}s is longer than auth.max_token_lifetime_secs ({}s): plinth would \
                     refuse the token",
                    ttl.as_secs(),
                    config.auth.max_token_lifetime_secs
                ));
            }
            let key = dev_signing_key(&config)?;
            let token = plinth_api::auth::mint_token(
                &key,
                &config.auth.issuer,
                &config.auth.audience,
                &org,
                *ttl,
            )?;
            println!("{token}");
            Ok(())
        }
        Command::DevJwks => {
            let jwks = plinth_api::auth::dev_jwks(&dev_signing_key(&config(&cli)?)?)?;
            println!("{jwks}");
            Ok(())
        }
    }
}

/// The key of `auth.dev_signing_key_file`.
fn dev_signing_key(config: &Config) -> Result<SecretText, String> {
    let file = config
        .auth
        .dev_signing_key_file
        .as_ref()
        .filter(|f| !f.as_os_str().is_empty())
        .ok_or(
            "auth.dev_signing_key_file is not set: dev keys exist only for local stacks (run \
             with --env dev, or PLINTH_ENV=dev)",
        )?;
    std::fs::read_to_string(file)
        .map(SecretText::new)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("plinth: {why}");
            ExitCode::FAILURE
        }
    }
}
