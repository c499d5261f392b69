//! The agents' local admin endpoint (`--admin`, `admin =` in their config files): where the
//! announcer and the syncer serve `/healthz`, `/metrics` and, for the announcer, the
//! maintenance control that `announcer maint` uses. On by default, on loopback only: the
//! endpoint has no authentication, so anyone who can reach it can put a host in maintenance.

use std::net::SocketAddr;

/// The announcer's default admin address.
pub const ANNOUNCER_DEFAULT: AdminListen = AdminListen(Some(SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9470)));
/// The syncer's default admin address.
pub const SYNCER_DEFAULT: AdminListen = AdminListen(Some(SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9480)));

/// `IP:PORT`, or `off` for no admin endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminListen(pub Option<SocketAddr>);

impl std::str::FromStr for AdminListen {
    type Err = String;
    fn from_str(s: &str) -> Result<AdminListen, String> {
        match s.trim() {
            "off" => Ok(AdminListen(None)),
            a => a.parse().map(|a| AdminListen(Some(a))).map_err(|_| format!("{s:?} is not IP:PORT or `off`")),
        }
    }
}

impl AdminListen {
    /// A warning for an address other hosts can reach, if this is one.
    pub fn exposure_warning(&self) -> Option<String> {
        let a = self.0?;
        (!a.ip().is_loopback()).then(|| {
            format!("the admin endpoint {a} is not on loopback: anyone who can reach it can read metrics and switch maintenance; keep it on 127.0.0.1")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_address_or_off_and_flags_exposure() {
        assert_eq!("off".parse::<AdminListen>(), Ok(AdminListen(None)));
        assert_eq!("127.0.0.1:9470".parse::<AdminListen>(), Ok(ANNOUNCER_DEFAULT));
        assert!("9470".parse::<AdminListen>().is_err());
        assert!("localhost:9470".parse::<AdminListen>().is_err());
        assert!(ANNOUNCER_DEFAULT.exposure_warning().is_none());
        assert!("0.0.0.0:9470".parse::<AdminListen>().unwrap().exposure_warning().is_some());
        assert!(AdminListen(None).exposure_warning().is_none());
    }
}
