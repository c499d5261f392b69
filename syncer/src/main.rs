//! `syncer`: keeps HAProxy backends equal to the live set of services.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use syncer::config::{Config, RunArgs, Source, Target};
use syncer::driver::Driver;
use syncer::metrics::Metrics;
use syncer::reconcile::Reconciler;
use syncer::state::StateDir;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(
    name = "syncer",
    version = runtime::metrics::VERSION,
    about = "Keeps HAProxy backends equal to the live set of a service (registry or ZooKeeper), without reloads",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

// Its variants take the daemon's flags; parsed once.
#[allow(clippy::large_enum_variant)]
#[derive(clap::Subcommand)]
enum Command {
    /// Print the operations the syncer would apply to HAProxy right now, and what its breaker
    /// would hold back, then exit without changing anything. Takes the same flags and config.
    Plan {
        #[command(flatten)]
        run: RunArgs,
    },
    /// Check a config file: every problem at once (exit 2), or the effective settings, with the
    /// flags and SYNCER_* variables given here applied as the daemon would (exit 0).
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    #[command(flatten)]
    Docs(runtime::docs::DocsCommand),
}

#[derive(clap::Subcommand)]
enum ConfigAction {
    /// Validate FILE and print the effective settings.
    Check {
        /// The config file (`--config` of the daemon).
        file: std::path::PathBuf,
        #[command(flatten)]
        run: RunArgs,
    },
}

/// HAProxy's prerequisites (`RuntimeApi::prerequisites`), checked at startup: every one that
/// fails is named and the syncer does not start. An HAProxy that does not answer yet is no
/// reason to stop (it may be starting too); the first pass then waits for it.
async fn check_prerequisites(driver: &syncer::driver::runtime::RuntimeApi, config: &Config) -> anyhow::Result<()> {
    let backends: Vec<String> = config.settings.mappings.iter().map(|m| m.backend.clone()).collect();
    match driver.prerequisites(&backends).await {
        Ok(problems) if problems.is_empty() => Ok(()),
        Ok(problems) => anyhow::bail!("HAProxy is not ready for the syncer (docs/syncer.md, \"HAProxy prerequisites\"):\n  {}", problems.join("\n  ")),
        Err(e) => {
            tracing::warn!(error = %e, "cannot check HAProxy's prerequisites yet; going on, and waiting for it");
            Ok(())
        }
    }
}

/// `syncer plan`.
async fn plan(config: Config) -> anyhow::Result<String> {
    let snap = syncer::dry_run::read_source(&config, Duration::from_secs(10)).await?;
    match config.target.clone() {
        Target::Runtime { endpoint, server_options } => {
            let mut driver = syncer::driver::runtime::RuntimeApi::new(syncer::driver::runtime::Endpoint::parse(&endpoint), server_options);
            check_prerequisites(&driver, &config).await?;
            syncer::dry_run::plan_text(&mut driver, &config, &snap).await
        }
        Target::Dataplane { url, version, auth, server_options } => {
            let mut driver = syncer::driver::dataplane::DataplaneApi::new(&url, version, auth, server_options)?;
            syncer::dry_run::plan_text(&mut driver, &config, &snap).await
        }
    }
}

/// SIGHUP never stops the syncer: the flags and the config file are resolved again and what may
/// change live goes to the reconciler (`reload::merge`); a config that does not resolve is
/// refused, with every problem logged, and the running one stays.
fn reload_on_sighup(args: RunArgs, running: Config) -> std::io::Result<tokio::sync::watch::Receiver<syncer::reconcile::Settings>> {
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = tokio::sync::watch::channel(running.settings.clone());
    tokio::spawn(async move {
        let mut running = running;
        while hup.recv().await.is_some() {
            runtime::notify::reloading();
            let resolved = args.clone().resolve();
            runtime::notify::ready("reloaded");
            let new = match resolved {
                Ok(c) => c,
                Err(errors) => {
                    tracing::error!(?errors, "SIGHUP: the config does not resolve; reload refused, the running config stays");
                    continue;
                }
            };
            let r = syncer::reload::merge(&running, &new);
            if !r.needs_restart.is_empty() {
                tracing::warn!(settings = ?r.needs_restart, "reload: these changed but need a restart; keeping the running values");
            }
            match r.settings {
                Some(settings) => {
                    tracing::info!(changes = ?r.applied, "reload: applied");
                    running.settings = settings.clone();
                    if tx.send(settings).is_err() {
                        return;
                    }
                }
                None => tracing::info!("reload: no change to apply"),
            }
        }
    });
    Ok(rx)
}

async fn run_with<D: Driver + Send + 'static>(driver: D, config: Config, metrics: Arc<Metrics>, args: RunArgs) -> anyhow::Result<()> {
    let state_dir = match &config.state_dir {
        Some(d) => Some(StateDir::open(d).map_err(|e| anyhow::anyhow!("state dir {}: {e}", d.display()))?),
        None => None,
    };
    let (tx, rx) = syncer::source::channel();
    let services: Vec<String> = config.settings.mappings.iter().map(|m| m.service.clone()).collect();
    let (reconciler, applied) = Reconciler::new(driver, config.settings.clone(), metrics, state_dir);
    let reconciler = reconciler.with_updates(reload_on_sighup(args, config.clone())?);
    match &config.source {
        Source::Registry(urls, access) => {
            let make = || client::Client::builder(urls).and_then(|b| b.access(access)).and_then(|b| b.build());
            let source_client = make()?;
            tokio::spawn(syncer::source::registry::run(source_client, services, tx));
            let (address, port) = match config.admin {
                Some(a) => (a.ip().to_string(), a.port()),
                None => ("127.0.0.1".to_string(), 1),
            };
            let reporter = syncer::report::Reporter { client: make()?, id: config.id.clone(), address, port, mappings: config.settings.mappings.clone() };
            tokio::spawn(reporter.run(applied));
        }
        Source::Zookeeper { connect, session_timeout, auth } => {
            tokio::spawn(syncer::source::zookeeper::run(connect.clone(), *session_timeout, auth.clone(), services, tx));
        }
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    runtime::notify::ready(&format!("following {} backends", config.settings.mappings.len()));
    tokio::select! {
        _ = reconciler.run(rx) => anyhow::bail!("the source stopped"),
        // Leaving HAProxy exactly as it is: the syncer's absence must not change the balancer.
        _ = term.recv() => tracing::info!("SIGTERM: stopping; HAProxy keeps its servers"),
        _ = int.recv() => tracing::info!("SIGINT: stopping; HAProxy keeps its servers"),
    }
    Ok(())
}

async fn run(config: Config, args: RunArgs) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = config.admin {
        if let Some(w) = proto::admin::AdminListen(Some(addr)).exposure_warning() {
            tracing::warn!("{w}");
        }
        match syncer::admin::serve(addr, metrics.clone()).await {
            Ok(()) => {}
            // The default address, taken (another syncer on this host): run without it.
            Err(e) if config.admin_default => {
                tracing::warn!("admin endpoint {addr}: {e}; running without it: give each syncer on a host its own --admin IP:PORT")
            }
            Err(e) => anyhow::bail!("admin endpoint {addr}: {e} (another syncer on this host? give each its own --admin IP:PORT, or --admin off)"),
        }
    }
    tracing::info!(source = ?config.source, target = ?config.target, mappings = ?config.settings.mappings, "syncer starting");
    match config.target.clone() {
        Target::Runtime { endpoint, server_options } => {
            let driver = syncer::driver::runtime::RuntimeApi::new(syncer::driver::runtime::Endpoint::parse(&endpoint), server_options);
            check_prerequisites(&driver, &config).await?;
            run_with(driver, config, metrics, args).await
        }
        Target::Dataplane { url, version, auth, server_options } => {
            let driver = syncer::driver::dataplane::DataplaneApi::new(&url, version, auth, server_options)?;
            run_with(driver, config, metrics, args).await
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let (planning, args) = match cli.command {
        Some(Command::Plan { run }) => (true, run),
        Some(Command::Config { action: ConfigAction::Check { file, mut run } }) => {
            run.config = Some(file);
            let password_file = run.dataplane_password_file.clone();
            return match run.resolve() {
                Ok(c) => {
                    print!("{}", runtime::config::render_settings(&c.effective(password_file.as_deref())));
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    for e in errors {
                        eprintln!("syncer config check: {e}");
                    }
                    ExitCode::from(2)
                }
            };
        }
        Some(Command::Docs(which)) => return runtime::docs::run(Cli::command(), &which),
        None => (false, cli.run),
    };
    let config = match args.clone().resolve() {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                eprintln!("syncer: {e}");
            }
            return ExitCode::from(2);
        }
    };
    runtime::logs::init(config.log_format, config.log_level.as_deref(), if planning { "warn" } else { "info" });
    if planning {
        return match plan(config).await {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("syncer plan: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run(config, args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("syncer: {e:#}");
            ExitCode::FAILURE
        }
    }
}
