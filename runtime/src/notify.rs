//! systemd's notify protocol (`Type=notify` units): each daemon says when it is up, what it is
//! doing, and when it reloads or stops. Outside systemd (no `NOTIFY_SOCKET`) every call does
//! nothing.
//!
//! "Ready" means the process is up and serving, not that the cluster is: a registry node is
//! ready once its storage is open and it listens, since the first node of a new cluster cannot
//! know a leader until the others start (with "ready = has a leader", starting the nodes one
//! after another under systemd would hang). The cluster's own state goes in the status line
//! (`systemctl status`) and in `/readyz`.

use sd_notify::NotifyState;

fn send(state: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

/// The daemon is up: `READY=1`, with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A new status line for `systemctl status`.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// A SIGHUP reload begins; call `ready` again when it is done.
pub fn reloading() {
    send(&[NotifyState::Reloading]);
}

/// A graceful stop begins.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}
