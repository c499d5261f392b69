//! `announcer`: run next to a web server (default), or switch its maintenance mode.

use std::process::ExitCode;
use std::sync::Arc;

use announcer::agent::{self, Event, Outcome, Shared};
use announcer::config::{Backend, Config, RunArgs};
use clap::{Parser, Subcommand, ValueEnum};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

#[derive(Parser)]
#[command(
    name = "announcer",
    version = runtime::metrics::VERSION,
    about = "Keeps this host's web server(s) registered in the registry (or ZooKeeper) while alive and healthy",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Put this host's instances into maintenance (`on`) or back (`off`), through a running
    /// announcer's admin endpoint.
    Maint {
        #[arg(value_enum)]
        state: OnOff,
        /// The running announcer's --admin address.
        #[arg(long, env = "ANNOUNCER_ADMIN", default_value = "127.0.0.1:9470")]
        admin: std::net::SocketAddr,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

async fn maint(on: bool, admin: std::net::SocketAddr) -> ExitCode {
    let url = format!("http://{admin}/v1/maint");
    match reqwest::Client::new().post(&url).json(&announcer::admin::MaintRequest { on }).send().await {
        Ok(r) if r.status().is_success() => {
            println!("maintenance {}", if on { "on" } else { "off" });
            ExitCode::SUCCESS
        }
        Ok(r) => {
            eprintln!("announcer maint: {url} answered {}", r.status());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("announcer maint: cannot reach the announcer's admin endpoint at {admin} (is it running, with --admin {admin}?): {e}");
            ExitCode::FAILURE
        }
    }
}

/// Forwards SIGTERM and SIGINT to the agent: the first drains, the second exits at once.
/// SIGHUP never stops it: the flags and the config file are resolved again and the result goes
/// to the agent (`reload::merge` decides what applies); a config that does not resolve is
/// refused, with every problem logged, and the running one stays.
fn forward_signals(events: mpsc::Sender<Event>, args: RunArgs) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = term.recv() => {
                    runtime::notify::stopping();
                    Event::Stop
                }
                _ = int.recv() => {
                    runtime::notify::stopping();
                    Event::Stop
                }
                _ = hup.recv() => match args.clone().resolve() {
                    Ok(config) => Event::Reload(Box::new(config)),
                    Err(errors) => {
                        tracing::error!(?errors, "SIGHUP: the config does not resolve; reload refused, the running config stays");
                        continue;
                    }
                },
            };
            if events.send(event).await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

async fn run(config: Config, args: RunArgs) -> anyhow::Result<Outcome> {
    let shared = Arc::new(Shared { metrics: Default::default(), status: Default::default() });
    let (tx, rx) = mpsc::channel(256);
    forward_signals(tx.clone(), args)?;
    if let Some(addr) = config.admin {
        if let Some(w) = proto::admin::AdminListen(Some(addr)).exposure_warning() {
            tracing::warn!("{w}");
        }
        match announcer::admin::serve(addr, shared.clone(), tx.clone()).await {
            Ok(()) => {}
            // The default address, taken (another announcer on this host): run without it.
            Err(e) if config.admin_default => tracing::warn!(
                "admin endpoint {addr}: {e}; running without it (`announcer maint` cannot reach this announcer): give each announcer on a host its own --admin IP:PORT"
            ),
            Err(e) => anyhow::bail!("admin endpoint {addr}: {e} (another announcer on this host? give each its own --admin IP:PORT, or --admin off)"),
        }
    }
    let names: Vec<String> = config.services.iter().map(|s| format!("{}/{}", s.service, s.instance)).collect();
    tracing::info!(backend = ?config.backend, ttl = ?config.ttl, instances = ?names, "announcer starting");
    let outcome = match &config.backend {
        Backend::Registry(urls, access) => {
            let client = client::Client::builder(urls)?.access(access)?.build()?;
            agent::run(announcer::registry::RegistryPublisher::new(client, config.ttl), config, tx.clone(), rx, shared).await
        }
        Backend::Zookeeper(addr) => {
            let publisher = announcer::zk::ZkPublisher::new(addr, config.ttl).with_auth(config.zookeeper_auth.clone());
            agent::run(publisher, config, tx.clone(), rx, shared).await
        }
    };
    drop(tx);
    Ok(outcome)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Maint { state, admin }) = cli.command {
        return maint(matches!(state, OnOff::On), admin).await;
    }
    let config = match cli.run.clone().resolve() {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                eprintln!("announcer: {e}");
            }
            return ExitCode::from(2);
        }
    };
    runtime::logs::init(config.log_format, config.log_level.as_deref(), "info");
    match run(config, cli.run).await {
        Ok(Outcome::Graceful) => ExitCode::SUCCESS,
        Ok(Outcome::Forced) => ExitCode::from(130),
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("announcer: {e:#}");
            ExitCode::FAILURE
        }
    }
}
