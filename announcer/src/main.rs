//! `announcer`: run next to a web server (default), or switch its maintenance mode.

use std::process::ExitCode;
use std::sync::Arc;

use announcer::agent::{self, Event, Outcome, Shared};
use announcer::config::{Backend, Config, RunArgs};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
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

// `config check` takes the daemon's flags, which makes that variant large; parsed once.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Put this host's instances, a service's or one instance into maintenance (`on`) or back
    /// (`off`), through a running announcer's admin endpoint. The announcer saves it in its
    /// --state-dir, so it outlasts a restart. Host and instance maintenance are independent:
    /// `off` for the host leaves an instance's own maintenance on.
    Maint {
        #[arg(value_enum)]
        state: OnOff,
        /// Only the instances of this service [default: the whole host].
        #[arg(long)]
        service: Option<String>,
        /// Only this instance (of --service).
        #[arg(long, requires = "service")]
        instance: Option<String>,
        /// Why (with `on`): shown by `registry ls` and carried in the instance's meta as
        /// `maint.reason`.
        #[arg(long)]
        reason: Option<String>,
        /// The running announcer's --admin address.
        #[arg(long, env = "ANNOUNCER_ADMIN", default_value = "127.0.0.1:9470")]
        admin: std::net::SocketAddr,
    },
    /// Check a config file: every problem at once (exit 2), or the effective settings, with the
    /// flags and ANNOUNCER_* variables given here applied as the daemon would (exit 0).
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    #[command(flatten)]
    Docs(runtime::docs::DocsCommand),
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate FILE and print the effective settings.
    Check {
        /// The config file (`--config` of the daemon).
        file: std::path::PathBuf,
        #[command(flatten)]
        run: RunArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

/// Prints what is in maintenance after the change.
fn print_maint(state: &announcer::maint::MaintState) {
    let reason = |m: &announcer::maint::Maint| m.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
    match &state.host {
        Some(m) => println!("host: maintenance on{}", reason(m)),
        None => println!("host: maintenance off"),
    }
    for ((s, i), m) in &state.instances {
        println!("{s}/{i}: maintenance on{}", reason(m));
    }
}

async fn maint(req: announcer::admin::MaintRequest, admin: std::net::SocketAddr) -> ExitCode {
    let url = format!("http://{admin}/v1/maint");
    match reqwest::Client::new().post(&url).json(&req).send().await {
        Ok(r) if r.status().is_success() => match r.json::<announcer::maint::MaintState>().await {
            Ok(state) => {
                print_maint(&state);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("announcer maint: done, but the answer could not be read: {e}");
                ExitCode::SUCCESS
            }
        },
        Ok(r) => {
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| v["message"].as_str().map(str::to_string)).unwrap_or(text);
            eprintln!("announcer maint: {status}: {message}");
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
    // Saved maintenance first: a file that cannot be read stops the start, rather than put
    // back into rotation what an operator took out.
    let store = announcer::maint::Store::new(&config.state_dir);
    let saved = store.load().map_err(|e| anyhow::anyhow!("maintenance state {e}"))?;
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
            agent::run(announcer::registry::RegistryPublisher::new(client, config.ttl), config, tx.clone(), rx, shared, store, saved).await
        }
        Backend::Zookeeper(addr) => {
            let publisher = announcer::zk::ZkPublisher::new(addr, config.ttl).with_auth(config.zookeeper_auth.clone());
            agent::run(publisher, config, tx.clone(), rx, shared, store, saved).await
        }
    };
    drop(tx);
    Ok(outcome)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Maint { state, service, instance, reason, admin }) => {
            return maint(announcer::admin::MaintRequest { on: matches!(state, OnOff::On), service, instance, reason }, admin).await;
        }
        Some(Command::Config { action: ConfigAction::Check { file, mut run } }) => {
            run.config = Some(file);
            return match run.resolve() {
                Ok(c) => {
                    print!("{}", runtime::config::render_settings(&c.effective()));
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    for e in errors {
                        eprintln!("announcer config check: {e}");
                    }
                    ExitCode::from(2)
                }
            };
        }
        Some(Command::Docs(which)) => return runtime::docs::run(Cli::command(), &which),
        None => {}
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
