//! `registry`: run a node (`serve`) or operate a cluster (`ls`, `status`, `balancers`,
//! `deregister`, `health`, `members`, `token`, `tls`, `snapshot`, `config`), and describe itself
//! (`completions`, `man`).

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use registry::cli::{self, Output};
use registry::config::ServeArgs;

/// jemalloc rather than glibc's malloc: a node's memory churns in bursts (a snapshot encodes
/// the whole store, a follower's snapshot is read whole), and glibc kept those pages in its
/// per-thread arenas, a third of a loaded node's RSS at 100k instances (docs/performance.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main` (`_RJEM_MALLOC_CONF` in the environment overrides
/// them). The one that differs from this build's defaults is `dirty_decay_ms`: freed pages go
/// back to the system within about a second rather than ten, since a node frees in bursts (a
/// snapshot of 40 MiB read or encoded whole) and an operator reads RSS as what the node holds.
/// The other two restate the defaults: background threads purge (the crate's
/// `background_threads` feature), and purged pages are released at once (`MADV_DONTNEED`,
/// jemalloc 5.3's `muzzy_decay_ms:0`). The symbol is the prefixed build's name, which
/// `tikv-jemallocator` uses unless `unprefixed_malloc_on_supported_platforms` is on.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8; 60] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

#[derive(Parser)]
#[command(name = "registry", version = runtime::metrics::VERSION, about = "Raft-replicated registry of services, instances and leases")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ClientArgs {
    /// Registry nodes to talk to, comma-separated (`http://HOST:PORT` or `HOST:PORT`); any node will do.
    #[arg(long, env = "REGISTRY_ADDR", value_delimiter = ',', required = true)]
    registry: Vec<String>,
    /// How to print the answer: `table` for people, `json` for scripts.
    #[arg(long, env = "REGISTRY_OUTPUT", value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(flatten)]
    access: client::AccessArgs,
}

// `serve`'s flags make that variant large; the value is parsed once, at startup.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run a registry node.
    Serve(ServeArgs),
    /// List instances, once or live (--watch).
    ///
    /// Columns: service, instance, address, state, weight, lease, TTL left, last renewal,
    /// maintenance reason. Internal services (names starting with `_`, such as the syncers'
    /// `_syncers` reports) are left out unless --all or named.
    Ls {
        #[command(flatten)]
        client: ClientArgs,
        /// Only this service.
        #[arg(value_name = "SERVICE")]
        service: Option<String>,
        /// Only this service (the same as SERVICE; kept for scripts).
        #[arg(long = "service", value_name = "SERVICE", hide = true, conflicts_with = "service")]
        service_flag: Option<String>,
        /// Only instances in this state.
        #[arg(long, value_enum)]
        state: Option<cli::StateFilter>,
        /// Also the internal services (`_syncers`).
        #[arg(long)]
        all: bool,
        /// Keep running and redraw the list whenever it changes (driven by the watch stream,
        /// not by polling; on a terminal the lease timings also count down every second).
        /// With --output json, one document per change, a line each. Reads through the leader
        /// (not with --stale, whose replica could be older than the change it was woken by).
        #[arg(long, conflicts_with_all = ["removed", "stale"])]
        watch: bool,
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
    /// Show which revision each balancer has applied, and which is behind.
    ///
    /// One row per syncer backend: the service it follows, the revision it has applied, and how
    /// far behind that service it is. The same table as in `status`.
    Balancers {
        #[command(flatten)]
        client: ClientArgs,
        /// Only backends that follow this service.
        #[arg(value_name = "SERVICE")]
        service: Option<String>,
    },
    /// Remove one instance; with --wait, until the balancers have applied it.
    ///
    /// With --wait, block until every live balancer that follows the
    /// service has applied the removal (their reports in `_syncers`: HAProxy drained the server
    /// and deleted it), and name the ones still late when --timeout passes. Exit 0 when applied
    /// (or no balancer follows the service), 3 when removed but not confirmed, 1 when the
    /// removal itself failed. Note that a running announcer re-registers an
    /// instance it still announces: put it in maintenance or stop it instead.
    Deregister {
        #[command(flatten)]
        client: ClientArgs,
        /// The service.
        service: String,
        /// The instance, as `registry ls` names it.
        instance: String,
        /// Wait until the balancers have applied the removal.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, e.g. `90s`, `2m`. Above the syncers' --drain-timeout (30 s by
        /// default): a server with long-lived connections is deleted only once they end or
        /// that timeout passes.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "60s", requires = "wait")]
        timeout: std::time::Duration,
    },
    /// Check that every node given with --registry is ready.
    ///
    /// Ready is `/readyz`: a member that knows a leader. Exits 0 if so, 1 naming the first that
    /// is not. For health checks, over TLS too.
    Health {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change the cluster's membership.
    Members {
        #[command(subcommand)]
        action: MembersAction,
    },
    /// Manage ACL tokens (admin): create, list, revoke; or generate one for bootstrapping.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Make TLS certificates.
    Tls {
        #[command(subcommand)]
        action: TlsAction,
    },
    /// Check a `serve` config file.
    ///
    /// Prints every problem at once (exit 2), or the effective settings, with the flags and
    /// REGISTRY_* variables given here applied as `serve` would (exit 0).
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Back up the registry's state, seed a new cluster from a backup, or check one.
    Snapshot {
        #[command(subcommand)]
        action: SnapshotAction,
    },
    #[command(flatten)]
    Docs(runtime::docs::DocsCommand),
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate FILE (a `registry serve --config` file) and print the effective settings.
    Check {
        /// The config file.
        file: std::path::PathBuf,
        #[command(flatten)]
        serve: ServeArgs,
    },
}

#[derive(Subcommand)]
enum SnapshotAction {
    /// Write a consistent backup (services, instances, leases, tokens' hashes, recent
    /// removals) to FILE, taken on the leader through any node (admin token). An existing
    /// file is never overwritten. Like `etcdctl snapshot save`.
    Save {
        #[command(flatten)]
        client: ClientArgs,
        /// The backup file to write (mode 0600).
        file: std::path::PathBuf,
    },
    /// Seed the data directory of one node of a NEW cluster from a backup. Run it for every
    /// node (same FILE and --peers, each with its own --id and --data-dir), then start each with
    /// `registry serve` and the same --id/--data-dir/--peers. Revisions go on from the
    /// backup's; leases keep their ids and get a fresh TTL, so announcers re-attach.
    Restore {
        /// The backup file.
        file: std::path::PathBuf,
        /// The node's data directory; must be missing or empty.
        #[arg(long)]
        data_dir: std::path::PathBuf,
        /// This node's id; one of --peers.
        #[arg(long)]
        id: u64,
        /// Every member of the new cluster, `ID=HOST:PORT,...`, as `serve --peers` will get it.
        #[arg(long)]
        peers: String,
        /// Start the new cluster's revisions this far past the backup's, so that no revision,
        /// lease id or token id the old cluster handed out after the backup is handed out again,
        /// and every watcher re-lists (like `etcdutl snapshot restore --bump-revision`). The same
        /// on every node.
        #[arg(long, default_value_t = registry::backup::DEFAULT_BUMP)]
        bump_revision: u64,
    },
    /// Check a backup (format, checksum, counts) and print its revision, time and counts.
    /// Exits 1 if it is damaged.
    Inspect {
        /// The backup file.
        file: std::path::PathBuf,
        /// How to print the report: `table` for people, `json` for scripts.
        #[arg(long, env = "REGISTRY_OUTPUT", value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Create a token with these scopes and print it. It is shown this once: the registry keeps
    /// only its hash.
    Create {
        #[command(flatten)]
        client: ClientArgs,
        /// `read`, `admin`, or `announce:SERVICE-GLOB` (e.g. `announce:web-*`); repeat for several.
        #[arg(long = "scope", required = true, value_name = "SCOPE")]
        scopes: Vec<String>,
        /// What the token is for (shown by `token list`).
        #[arg(long, default_value = "")]
        description: String,
        /// Write the token to this new file (mode 0600) instead of printing it, ready for
        /// --token-file. An existing file is never overwritten.
        #[arg(long, value_name = "FILE")]
        out: Option<std::path::PathBuf>,
    },
    /// List tokens: id, scopes, description, created. Never their secrets.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a token: each node refuses it as soon as it applies the revocation.
    Revoke {
        #[command(flatten)]
        client: ClientArgs,
        /// The token's id (from `token list`).
        id: u64,
    },
    /// Print a new random token (43 characters), e.g. for --acl-bootstrap-token-file:
    /// `registry token generate > FILE && chmod 600 FILE`.
    Generate,
}

#[derive(Subcommand)]
enum TlsAction {
    /// Write a cluster CA (once; reused on later runs), a node certificate per host, and a
    /// client certificate into DIR. Existing files are kept, so a later run with a new host
    /// adds only that host's certificate. Start each node with
    /// `--tls-cert DIR/node-HOST.pem --tls-key DIR/node-HOST-key.pem --tls-ca DIR/ca.pem`.
    Init {
        /// Where to write the files (created if missing). Keep `ca-key.pem` off the nodes.
        #[arg(long, value_name = "DIR")]
        dir: std::path::PathBuf,
        /// The host names or IP addresses the nodes are reached at, comma-separated: one
        /// certificate each, valid for that name.
        #[arg(long, value_delimiter = ',', required = true, value_name = "HOST")]
        hosts: Vec<String>,
    },
}

#[derive(clap::Args)]
struct MemberCredentials {
    /// The cluster's shared secret (the nodes' --cluster-secret-file). Membership changes take
    /// an admin token (--token-file) on a cluster with ACLs, else this secret.
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
        /// The id of the node to remove, as `registry status` shows it.
        #[arg(long)]
        id: u64,
    },
}

fn client(args: &ClientArgs) -> Result<client::Client, ExitCode> {
    member_client(args, &MemberCredentials { cluster_secret_file: None })
}

/// A client with the TLS settings given, and the cluster secret when one is given.
fn member_client(args: &ClientArgs, credentials: &MemberCredentials) -> Result<client::Client, ExitCode> {
    let fail = |e: String| {
        eprintln!("registry: {e}");
        ExitCode::from(2)
    };
    let mut builder = client::Client::builder(&args.registry).map_err(|e| fail(e.to_string()))?;
    if let Some(path) = &credentials.cluster_secret_file {
        let secret = registry::peer_auth::ClusterSecret::from_file(path).map_err(fail)?;
        builder = builder.cluster_secret(secret.expose()).map_err(|e| fail(e.to_string()))?;
    }
    builder.access(&args.access.over(client::Access::default())).and_then(|b| b.build()).map_err(|e| fail(e.to_string()))
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
                runtime::logs::init(serve.log_format, serve.log_level.as_deref(), "info,openraft=warn");
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
        Command::Ls { client: args, service, service_flag, state, all, watch, stale, removed } => {
            let c = match client(&args) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let service = service.or(service_flag);
            if removed {
                return run_client(cli::removed(&c, service.as_deref(), stale, args.output)).await;
            }
            let q = cli::Query { service, state, all, stale };
            if watch {
                use std::io::IsTerminal as _;
                let terminal = std::io::stdout().is_terminal();
                return match cli::ls::watch(&c, &q, args.output, terminal, std::io::stdout()).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("registry: {e}");
                        ExitCode::FAILURE
                    }
                };
            }
            run_client(cli::ls(&c, &q, args.output)).await
        }
        Command::Balancers { client: args, service } => {
            let c = match client(&args) {
                Ok(c) => c,
                Err(code) => return code,
            };
            run_client(cli::balancers(&c, service.as_deref(), args.output)).await
        }
        Command::Deregister { client: args, service, instance, wait, timeout } => {
            let c = match client(&args) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match cli::deregister::deregister(&c, &service, &instance, wait.then_some(timeout), args.output).await {
                Ok(o) => {
                    print!("{}", o.text);
                    if o.confirmed {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(cli::deregister::NOT_CONFIRMED)
                    }
                }
                Err(e) => {
                    eprintln!("registry: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Docs(which) => runtime::docs::run(Cli::command(), &which),
        Command::Status { client: args } => {
            let c = match client(&args) {
                Ok(c) => c,
                Err(code) => return code,
            };
            run_client(cli::status(&c, args.output)).await
        }
        Command::Health { client: args } => {
            let c = match client(&args) {
                Ok(c) => c,
                Err(code) => return code,
            };
            run_client(async {
                let mut out = String::new();
                for url in c.urls() {
                    match c.ready_at(url).await? {
                        Ok(()) => out.push_str(&format!("{url}: ready\n")),
                        Err(why) => return Err(client::Error::Unavailable(format!("{url} is not ready: {why}"))),
                    }
                }
                Ok(out)
            })
            .await
        }
        Command::Tls { action: TlsAction::Init { dir, hosts } } => match registry::tls::init::init(&dir, &hosts) {
            Ok(w) => {
                for f in &w.created {
                    println!("created {}", f.display());
                }
                for f in &w.kept {
                    println!("kept    {}", f.display());
                }
                let d = dir.display();
                println!("\nStart each node with:\n  registry serve --tls-cert {d}/node-HOST.pem --tls-key {d}/node-HOST-key.pem --tls-ca {d}/ca.pem ...");
                println!("Point clients at it with:\n  export REGISTRY_CA_FILE={d}/ca.pem   # and, for mutual TLS, REGISTRY_CERT_FILE={d}/client.pem REGISTRY_KEY_FILE={d}/client-key.pem");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("registry tls init: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Config { action: ConfigAction::Check { file, serve } } => match registry::config::check(serve, file) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in errors {
                    eprintln!("registry config check: {e}");
                }
                ExitCode::from(2)
            }
        },
        Command::Snapshot { action } => {
            let (what, done) = match action {
                SnapshotAction::Save { client: args, file } => {
                    let c = match client(&args) {
                        Ok(c) => c,
                        Err(code) => return code,
                    };
                    ("save", registry::backup::save(&c, &file).await)
                }
                SnapshotAction::Inspect { file, output } => ("inspect", registry::backup::inspect(&file, output == Output::Json)),
                SnapshotAction::Restore { file, data_dir, id, peers, bump_revision } => {
                    ("restore", registry::backup::restore_command(&file, &data_dir, id, &peers, bump_revision))
                }
            };
            match done {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("registry snapshot {what}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Token { action } => match action {
            TokenAction::Generate => {
                println!("{}", client::generate_token());
                ExitCode::SUCCESS
            }
            TokenAction::Create { client: args, scopes, description, out } => {
                let c = match client(&args) {
                    Ok(c) => c,
                    Err(code) => return code,
                };
                let json = args.output == Output::Json;
                let token = client::generate_token();
                // The file first (refused if it exists), so a token is never minted and lost.
                let staged = match &out {
                    Some(path) => match cli::stage_secret(path, &token) {
                        Ok(staged) => Some(staged),
                        Err(e) => {
                            eprintln!("registry token create: {e}");
                            return ExitCode::FAILURE;
                        }
                    },
                    None => None,
                };
                run_client(async {
                    let r = c.create_token(&token, &scopes, &description).await;
                    let r = match (r, staged) {
                        (Ok(r), Some(staged)) => {
                            staged.commit().map_err(|e| client::Error::BadCredentials(format!("token {} was created, but: {e}; revoke it", r.id)))?;
                            let path = out.as_ref().expect("staged only with --out").display();
                            return Ok(if json {
                                serde_json::json!({ "id": r.id, "file": path.to_string(), "scopes": scopes }).to_string() + "\n"
                            } else {
                                format!("token {} written to {path}\nscopes {}\n", r.id, scopes.join(" "))
                            });
                        }
                        (r, _) => r?,
                    };
                    Ok(if json {
                        serde_json::json!({ "id": r.id, "token": token, "scopes": scopes }).to_string() + "\n"
                    } else {
                        format!("token {token}\nid    {}\nscopes {}\n(shown once: the registry keeps only its hash)\n", r.id, scopes.join(" "))
                    })
                })
                .await
            }
            TokenAction::List { client: args } => {
                let c = match client(&args) {
                    Ok(c) => c,
                    Err(code) => return code,
                };
                run_client(cli::tokens(&c, args.output)).await
            }
            TokenAction::Revoke { client: args, id } => {
                let c = match client(&args) {
                    Ok(c) => c,
                    Err(code) => return code,
                };
                let json = args.output == Output::Json;
                run_client(async {
                    let r = c.revoke_token(id).await?;
                    Ok(if json { serde_json::to_string(&r).unwrap() + "\n" } else { format!("token {id} revoked at revision {}\n", r.revision) })
                })
                .await
            }
        },
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
