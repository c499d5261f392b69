//! Local health checks and the rise/fall rule that turns their results into up/down.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::process::Command;

/// HAProxy's rule: `rise` consecutive successes to become healthy, `fall` consecutive failures
/// to become unhealthy. Starts unhealthy, so an instance is announced only once it has passed.
#[derive(Debug, Clone)]
pub struct RiseFall {
    rise: u32,
    fall: u32,
    healthy: bool,
    streak: u32,
}

impl RiseFall {
    pub fn new(rise: u32, fall: u32) -> RiseFall {
        RiseFall { rise: rise.max(1), fall: fall.max(1), healthy: false, streak: 0 }
    }

    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Records one check result; returns the new state when it changes.
    pub fn observe(&mut self, ok: bool) -> Option<bool> {
        if ok == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if ok { self.rise } else { self.fall };
        if self.streak >= needed {
            self.healthy = ok;
            self.streak = 0;
            Some(ok)
        } else {
            None
        }
    }
}

/// One kind of check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// GET; healthy on 2xx/3xx and, if set, a body containing `expect`.
    Http { url: String, expect: Option<String> },
    /// A TCP connect.
    Tcp { addr: String },
    /// `sh -c COMMAND`; healthy on exit status 0.
    Exec { command: String },
}

pub struct Checker {
    check: Check,
    timeout: Duration,
    http: reqwest::Client,
}

impl Checker {
    pub fn new(check: Check, timeout: Duration) -> Checker {
        // Redirects are not followed: a 3xx is itself a healthy answer.
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).timeout(timeout).build().expect("http client");
        Checker { check, timeout, http }
    }

    /// Runs the check once; `Err` says why it failed.
    pub async fn run(&self) -> Result<(), String> {
        match tokio::time::timeout(self.timeout, self.run_inner()).await {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {:?}", self.timeout)),
        }
    }

    async fn run_inner(&self) -> Result<(), String> {
        match &self.check {
            Check::Http { url, expect } => {
                let resp = self.http.get(url).send().await.map_err(|e| e.to_string())?;
                let status = resp.status();
                if !(status.is_success() || status.is_redirection()) {
                    return Err(format!("HTTP status {status}"));
                }
                if let Some(want) = expect {
                    let body = resp.text().await.map_err(|e| e.to_string())?;
                    if !body.contains(want.as_str()) {
                        return Err(format!("body does not contain {want:?}"));
                    }
                }
                Ok(())
            }
            Check::Tcp { addr } => TcpStream::connect(addr).await.map(|_| ()).map_err(|e| e.to_string()),
            Check::Exec { command } => {
                let status = Command::new("sh").arg("-c").arg(command).kill_on_drop(true).status().await.map_err(|e| e.to_string())?;
                if status.success() {
                    Ok(())
                } else {
                    Err(format!("command exited with {status}"))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_down_and_needs_rise_successes() {
        let mut h = RiseFall::new(2, 3);
        assert!(!h.healthy());
        assert_eq!(h.observe(true), None);
        assert_eq!(h.observe(true), Some(true));
        assert!(h.healthy());
    }

    #[test]
    fn needs_fall_consecutive_failures() {
        let mut h = RiseFall::new(1, 3);
        h.observe(true);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(true), None, "a success resets the failure streak");
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), Some(false));
        assert!(!h.healthy());
    }

    #[test]
    fn rise_and_fall_of_one_flip_at_once() {
        let mut h = RiseFall::new(1, 1);
        assert_eq!(h.observe(true), Some(true));
        assert_eq!(h.observe(false), Some(false));
        assert_eq!(h.observe(false), None);
    }

    #[tokio::test]
    async fn exec_and_tcp_checks() {
        assert!(Checker::new(Check::Exec { command: "true".into() }, Duration::from_secs(5)).run().await.is_ok());
        assert!(Checker::new(Check::Exec { command: "exit 3".into() }, Duration::from_secs(5)).run().await.is_err());
        let slow = Checker::new(Check::Exec { command: "sleep 5".into() }, Duration::from_millis(100)).run().await;
        assert!(slow.unwrap_err().contains("timed out"));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        assert!(Checker::new(Check::Tcp { addr: addr.clone() }, Duration::from_secs(1)).run().await.is_ok());
        drop(l);
        assert!(Checker::new(Check::Tcp { addr }, Duration::from_secs(1)).run().await.is_err());
    }

    #[tokio::test]
    async fn http_check_wants_2xx_3xx_and_the_expected_body() {
        use axum::routing::get;
        let app = axum::Router::new()
            .route("/ok", get(|| async { "all good" }))
            .route("/moved", get(|| async { axum::response::Redirect::temporary("/elsewhere") }))
            .route("/bad", get(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "no") }));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        let check = |path: &str, expect: Option<&str>| {
            Checker::new(Check::Http { url: format!("{base}{path}"), expect: expect.map(str::to_string) }, Duration::from_secs(2))
        };
        assert!(check("/ok", None).run().await.is_ok());
        assert!(check("/ok", Some("good")).run().await.is_ok());
        assert!(check("/ok", Some("bad")).run().await.is_err());
        assert!(check("/moved", None).run().await.is_ok());
        assert!(check("/bad", None).run().await.unwrap_err().contains("500"));
    }
}
