//! `registry`: run a node (`serve`) or operate a cluster (`ls`, `status`, `members`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use registry::cli::{self, Output};
use registry::config::{LogFormat, ServeArgs};

#[derive(Parser)]
#[command(name = "registry", version, about = "Raft-replicated registry of services, instances and leases")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ClientArgs {
    /// Registry nodes to talk to, comma-separated (`http://HOST:PORT` or `HOST:PORT`); any node will do.
    #[arg(long, env = "REGISTRY_ADDR", value_delimiter = ',', required = true)]
    registry: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

// `serve`'s flags make that variant large; the value is parsed once, at startup.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run a registry node.
    Serve(ServeArgs),
    /// List instances: service, instance, address, state, weight, lease TTL left, last renewal.
    Ls {
        #[command(flatten)]
        client: ClientArgs,
        /// Only this service.
        #[arg(long)]
        service: Option<String>,
        /// Read from the answering node's replica instead of the leader (no lease timings).
        #[arg(long)]
        stale: bool,
        /// Show the most recent removals instead (the last 1000), with their cause and time:
        /// expired (lease, term), revoked, deregistered, or replaced by a new address.
        #[arg(long)]
        removed: bool,
    },
    /// Show members, roles, leader, term, log indexes and which nodes are unreachable.
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change the cluster's membership.
    Members {
        #[command(subcommand)]
        action: MembersAction,
    },
}

#[derive(clap::Args)]
struct MemberCredentials {
    /// The cluster's shared secret (the nodes' --cluster-secret-file): membership changes are
    /// refused without it, unless the cluster runs --insecure.
    #[arg(long, env = "REGISTRY_CLUSTER_SECRET_FILE", value_name = "FILE")]
    cluster_secret_file: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum MembersAction {
    /// Add a node: it joins as a learner, catches up, then becomes a voter.
    Add {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        credentials: MemberCredentials,
        /// The new node's id.
        #[arg(long)]
        id: u64,
        /// The new node's HOST:PORT (its --advertise address).
        #[arg(long)]
        addr: String,
    },
    /// Remove a node from the cluster.
    Remove {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        credentials: MemberCredentials,
        #[arg(long)]
        id: u64,
    },
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,openraft=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn client(args: &ClientArgs) -> Result<client::Client, ExitCode> {
    client::Client::new(&args.registry).map_err(|e| {
        eprintln!("registry: {e}");
        ExitCode::from(2)
    })
}

/// A client for membership changes: with the cluster secret when one is given.
fn member_client(args: &ClientArgs, credentials: &MemberCredentials) -> Result<client::Client, ExitCode> {
    let fail = |e: String| {
        eprintln!("registry: {e}");
        ExitCode::from(2)
    };
    let builder = client::Client::builder(&args.registry).map_err(|e| fail(e.to_string()))?;
    let builder = match &credentials.cluster_secret_file {
        Some(path) => {
            let secret = registry::peer_auth::ClusterSecret::from_file(path).map_err(fail)?;
            builder.cluster_secret(secret.expose()).map_err(|e| fail(e.to_string()))?
        }
        None => builder,
    };
    builder.build().map_err(|e| fail(e.to_string()))
}

async fn run_client<F: std::future::Future<Output = Result<String, client::Error>>>(f: F) -> ExitCode {
    match f.await {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("registry: {e}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => match args.resolve() {
            Err(errors) => {
                for e in errors {
                    eprintln!("registry serve: {e}");
                }
                ExitCode::from(2)
            }
            Ok(serve) => {
                init_logs(serve.log_format);
                match registry::server::run(serve).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        tracing::error!("{e:#}");
                        eprintln!("registry serve: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            }
        },
        Command::Ls { client: args, service, stale, removed } => {
            let c = match client(&args) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if removed {
                return run_client(cli::removed(&c, service.as_deref(), stale, args.output)).await;
            }
            run_client(cli::ls(&c, service.as_deref(), stale, args.output)).await
        }
        Command::Status { client: args } => {
            let c = match client(&args) {
                Ok(c) => c,
                Err(code) => return code,
            };
            run_client(cli::status(&c, args.output)).await
        }
        Command::Members { action } => match action {
            MembersAction::Add { client: args, credentials, id, addr } => {
                let c = match member_client(&args, &credentials) {
                    Ok(c) => c,
                    Err(code) => return code,
                };
                let json = args.output == Output::Json;
                run_client(async {
                    let r = c.add_member(id, &addr).await?;
                    Ok(if json { serde_json::to_string(&r).unwrap() + "\n" } else { format!("node {id} added as a voter at revision {}\n", r.revision) })
                })
                .await
            }
            MembersAction::Remove { client: args, credentials, id } => {
                let c = match member_client(&args, &credentials) {
                    Ok(c) => c,
                    Err(code) => return code,
                };
                let json = args.output == Output::Json;
                run_client(async {
                    let r = c.remove_member(id).await?;
                    Ok(if json { serde_json::to_string(&r).unwrap() + "\n" } else { format!("node {id} removed at revision {}\n", r.revision) })
                })
                .await
            }
        },
    }
}
