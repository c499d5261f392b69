//! Validation of names and addresses, shared so a client can reject bad input before sending.

use std::net::IpAddr;

use crate::{InstanceSpec, Meta, RegisterRequest, Registration};

pub const MAX_NAME_LEN: usize = 128;
pub const MAX_WEIGHT: u32 = 256;
pub const MAX_META_ENTRIES: usize = 64;
pub const MAX_META_LEN: usize = 1024;
/// Instances one `POST /v1/register` may put under its lease: a host's services, not a fleet.
pub const MAX_REGISTER_INSTANCES: usize = 64;

/// Service names: `[A-Za-z0-9._-]{1,128}`.
pub fn service_name(value: &str) -> Result<(), String> {
    name("service", value, false)
}

/// Instance names: `[A-Za-z0-9._:-]{1,128}`. The colon is allowed because the default instance
/// id is `address:port`, the name ZooKeeper-based setups already use.
pub fn instance_name(value: &str) -> Result<(), String> {
    name("instance", value, true)
}

fn name(kind: &str, value: &str, colon: bool) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{kind} name is empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(format!("{kind} name is {} bytes long, the limit is {MAX_NAME_LEN}", value.len()));
    }
    if let Some(c) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') || (colon && *c == ':'))) {
        let allowed = if colon { "A-Z a-z 0-9 . _ - :" } else { "A-Z a-z 0-9 . _ -" };
        return Err(format!("{kind} name {value:?} has the character {c:?}; allowed are {allowed}"));
    }
    Ok(())
}

/// An IP address or an RFC 1123 host name.
pub fn address(value: &str) -> Result<(), String> {
    if value.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let bad = || Err(format!("address {value:?} is neither an IP address nor a host name"));
    if value.is_empty() || value.len() > 253 {
        return bad();
    }
    for label in value.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return bad();
        }
    }
    // All-numeric dotted names that did not parse as an IP (e.g. "999.1.1.1") are bad IPs.
    if value.split('.').all(|l| l.chars().all(|c| c.is_ascii_digit())) {
        return bad();
    }
    Ok(())
}

/// Checks a registration body; returns every problem, not just the first, or the typed
/// registration to replicate.
pub fn instance_spec(spec: &InstanceSpec) -> Result<Registration, Vec<String>> {
    let mut errors = Vec::new();
    if let Err(e) = address(&spec.address) {
        errors.push(e);
    }
    if spec.port == 0 || spec.port > 65535 {
        errors.push(format!("port {} is outside 1..65535", spec.port));
    }
    if spec.weight > MAX_WEIGHT {
        errors.push(format!("weight {} is above the maximum {MAX_WEIGHT}", spec.weight));
    }
    if spec.meta.len() > MAX_META_ENTRIES {
        errors.push(format!("meta has {} entries, the limit is {MAX_META_ENTRIES}", spec.meta.len()));
    }
    for (k, v) in &spec.meta {
        if k.is_empty() || k.len() > MAX_NAME_LEN {
            errors.push(format!("meta key {k:?} must be 1..{MAX_NAME_LEN} bytes"));
        }
        if v.len() > MAX_META_LEN {
            errors.push(format!("meta value of {k:?} is {} bytes, the limit is {MAX_META_LEN}", v.len()));
        }
    }
    if errors.is_empty() {
        Ok(Registration {
            address: spec.address.clone(),
            port: spec.port as u16,
            lease_id: spec.lease_id,
            weight: spec.weight,
            state: spec.state,
            meta: Meta::from(&spec.meta),
        })
    } else {
        Err(errors)
    }
}

/// A named registration, as `register` returns it: `(service, instance, registration)`.
pub type Named = (String, String, Registration);

/// Checks a `POST /v1/register` body (all but the TTL range, which is the cluster's setting);
/// returns every problem, each prefixed with the instance it is about, or the registrations
/// to replicate, without a lease (the entry that grants it names it).
pub fn register(req: &RegisterRequest) -> Result<Vec<Named>, Vec<String>> {
    let mut errors = Vec::new();
    if req.instances.is_empty() {
        errors.push("instances is empty: give at least one".to_string());
    }
    if req.instances.len() > MAX_REGISTER_INSTANCES {
        errors.push(format!("{} instances, the limit is {MAX_REGISTER_INSTANCES} per registration", req.instances.len()));
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for (i, inst) in req.instances.iter().enumerate() {
        let at = |e: String| format!("instances[{i}]: {e}");
        let names: Vec<String> = [service_name(&inst.service), instance_name(&inst.instance)].into_iter().filter_map(Result::err).collect();
        errors.extend(names.into_iter().map(at));
        if !seen.insert((inst.service.as_str(), inst.instance.as_str())) {
            errors.push(at(format!("instance {:?} of {:?} is listed twice", inst.instance, inst.service)));
        }
        match instance_spec(&inst.spec(None)) {
            Ok(r) => out.push((inst.service.clone(), inst.instance.clone(), r)),
            Err(e) => errors.extend(e.into_iter().map(at)),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(service_name("web-servers").is_ok());
        assert!(instance_name("10.0.0.5:8080").is_ok());
        assert!(service_name("web:servers").is_err());
        assert!(service_name("").is_err());
        assert!(service_name(&"a".repeat(129)).is_err());
        assert!(service_name(&"a".repeat(128)).is_ok());
        assert!(instance_name("a/b").is_err());
        assert!(service_name("a b").is_err());
    }

    #[test]
    fn addresses() {
        for ok in ["10.0.0.5", "::1", "web-1.example.com", "localhost"] {
            assert!(address(ok).is_ok(), "{ok}");
        }
        for bad in ["", "999.1.1.1", "-web", "a..b", "web_1", "a b", &"a".repeat(64)] {
            assert!(address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spec_reports_every_error() {
        let spec = InstanceSpec { address: "no way".into(), port: 70000, lease_id: None, weight: 1000, state: Default::default(), meta: Default::default() };
        assert_eq!(instance_spec(&spec).unwrap_err().len(), 3);
    }

    fn inst(service: &str, instance: &str, port: u64) -> crate::RegisterInstance {
        crate::RegisterInstance {
            service: service.into(),
            instance: instance.into(),
            address: "10.0.0.5".into(),
            port,
            weight: 100,
            state: Default::default(),
            meta: Default::default(),
        }
    }

    #[test]
    fn register_names_each_bad_instance_and_refuses_duplicates() {
        let ok = RegisterRequest { ttl_ms: 10_000, instances: vec![inst("web", "a", 80), inst("api", "a", 81)] };
        let named = register(&ok).unwrap();
        assert_eq!(named.len(), 2);
        assert!(named.iter().all(|(_, _, r)| r.lease_id().is_none()), "the lease is named by the entry, not the body");

        let bad = RegisterRequest { ttl_ms: 10_000, instances: vec![inst("web", "a", 80), inst("web", "a", 80), inst("bad name", "b", 0)] };
        let errors = register(&bad).unwrap_err();
        assert!(errors.iter().any(|e| e.starts_with("instances[1]") && e.contains("twice")), "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("instances[2]") && e.contains("service name")), "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("instances[2]") && e.contains("port 0")), "{errors:?}");

        assert!(register(&RegisterRequest { ttl_ms: 10_000, instances: vec![] }).is_err());
        let many = RegisterRequest { ttl_ms: 10_000, instances: (0..=MAX_REGISTER_INSTANCES as u64).map(|i| inst("web", &format!("i{i}"), 80)).collect() };
        assert!(register(&many).unwrap_err()[0].contains("limit"));
    }
}
