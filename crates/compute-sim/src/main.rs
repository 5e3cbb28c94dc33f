//! `plinth-compute-sim`: the local compute service.
//!
//! Configuration: `config/compute-sim.toml` (or `--config FILE`), then environment variables
//! `COMPUTE_SIM__<KEY>` (e.g. `COMPUTE_SIM__LISTEN=127.0.0.1:9000`).

use anyhow::Context;
use plinth_compute_sim::{SimSettings, start};

const USAGE: &str = "usage: plinth-compute-sim [--config FILE]

Serves the compute contract (docs/ARCHITECTURE.md §4) on the configured address. Settings come from FILE
(default config/compute-sim.toml) and COMPUTE_SIM__<KEY> environment variables.";

fn settings(file: &str) -> anyhow::Result<SimSettings> {
    let settings: SimSettings = config::Config::builder()
        .add_source(config::File::with_name(file).required(false))
        .add_source(config::Environment::with_prefix("COMPUTE_SIM").separator("__"))
        .build()
        .and_then(config::Config::try_deserialize)
        .with_context(|| format!("reading the configuration ({file} and COMPUTE_SIM__*)"))?;
    settings
        .validate()
        .map_err(|why| anyhow::anyhow!("invalid configuration: {why}"))?;
    Ok(settings)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let file = match args.as_slice() {
        [] => "config/compute-sim.toml".to_owned(),
        [flag, file] if flag == "--config" => file.clone(),
        [flag] if flag == "--help" || flag == "-h" => {
            eprintln!("{USAGE}");
            return Ok(());
        }
        _ => anyhow::bail!("{USAGE}"),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let settings = settings(&file)?;
    let running = start(settings).await?;
    tracing::info!(address = %running.addr(), "compute service listening");
    running.wait().await?;
    Ok(())
}
