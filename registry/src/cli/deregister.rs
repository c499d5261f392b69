//! `registry deregister SERVICE INSTANCE [--wait]`: removes an instance and, with `--wait`,
//! blocks until every live balancer that follows the service has applied the removal
//! (`client::convergence`, the rule the announcer's drain waits on), or the deadline passes,
//! naming the balancers still late. What "sleep 5 s and hope" after a deregistration does,
//! done with the balancers' own reports.

use std::time::Duration;

use client::convergence::{self, Convergence};
use client::Client;
use tokio::sync::mpsc;

use super::Output;

/// How `deregister` ended (the removal itself succeeded; a failed one is an `Err`).
pub struct Outcome {
    pub text: String,
    /// Whether `--wait` saw every balancer apply it (or no wait was asked, or no balancer
    /// follows the service). `false` exits `NOT_CONFIRMED`, not 1: the instance is gone, and a
    /// script that deregistered again would only get a 404.
    pub confirmed: bool,
}

/// The exit code of a removal that `--wait` could not confirm in time.
pub const NOT_CONFIRMED: u8 = 3;

pub async fn deregister(client: &Client, service: &str, instance: &str, wait: Option<Duration>, output: Output) -> Result<Outcome, client::Error> {
    let written = client.delete_instance(service, instance).await?;
    let revision = written.revision;
    let Some(limit) = wait else {
        let text = match output {
            Output::Json => serde_json::json!({ "service": service, "instance": instance, "revision": revision }).to_string() + "\n",
            Output::Table => format!("{service}/{instance} deregistered at revision {revision}\n"),
        };
        return Ok(Outcome { text, confirmed: true });
    };
    let verdict = wait_applied(client, service, revision, limit).await;
    // No live balancer reporting on the service at all: there is nothing to wait for.
    let confirmed = matches!(verdict, Convergence::Applied { .. } | Convergence::Unfollowed { .. });
    let text = match output {
        Output::Json => {
            serde_json::json!({ "service": service, "instance": instance, "revision": revision, "balancers": verdict, "confirmed": confirmed }).to_string()
                + "\n"
        }
        Output::Table => {
            let mut t = format!("{service}/{instance} deregistered at revision {revision}\n");
            match &verdict {
                Convergence::Applied { balancers } => t += &format!("applied by every balancer that follows {service}: {}\n", balancers.join(", ")),
                Convergence::Unfollowed { .. } => t += &format!("no balancer reports following {service}: nothing to wait for\n"),
                Convergence::Unknown { why } => t += &format!("not confirmed: {why}\n"),
                Convergence::Waiting { late } => {
                    t += &format!("not applied within {} by:\n", humantime::format_duration(limit));
                    for l in late {
                        t += &format!("  {l}\n");
                    }
                }
            }
            t
        }
    };
    Ok(Outcome { text, confirmed })
}

/// The balancers' last verdict on `service` reaching `revision`, once final or at `limit`.
async fn wait_applied(client: &Client, service: &str, revision: u64, limit: Duration) -> Convergence {
    let (tx, mut rx) = mpsc::channel(8);
    let targets = convergence::Targets::from([(service.to_string(), revision)]);
    let follower = tokio::spawn(convergence::follow(client.clone(), targets, tx));
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = Convergence::Unknown { why: "the balancers' reports could not be read in time".into() };
    // Ends on a final verdict (the follower then stops sending) or at the deadline.
    while let Ok(Some(v)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        let done = !matches!(v, Convergence::Waiting { .. });
        last = v;
        if done {
            break;
        }
    }
    follower.abort();
    last
}
