//! Maintenance: the operator's switch, for the whole host or for one instance, with a reason,
//! kept in a small file (`STATE_DIR/maint.json`) so that a restarted announcer starts in the
//! maintenance it stopped in.
//!
//! The two levels are independent, as Consul's node and service maintenance: `maint off` for
//! the host leaves an instance's own maintenance on, and the other way round. An instance is in
//! maintenance while either is on; its own reason wins over the host's.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::publish::Key;

/// The file name under `--state-dir`.
pub const FILE_NAME: &str = "maint.json";

/// Longest reason accepted: it travels as an instance meta value.
pub const MAX_REASON_LEN: usize = proto::validate::MAX_META_LEN;

/// One switch that is on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it was switched on, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub since_ms: u64,
}

/// What to switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every instance of this announcer.
    Host,
    /// Every configured instance of one service.
    Service(String),
    /// One instance.
    Instance(String, String),
}

/// `announcer maint on|off ...`, as the agent receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub on: bool,
    pub target: Target,
    pub reason: Option<String>,
}

/// The maintenance switches that are on. Also the file's format (a stability boundary: a new
/// field needs a serde default; unknown fields are ignored, so an older build reads a newer
/// file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintState {
    /// Host-wide maintenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Maint>,
    /// Per-instance maintenance.
    #[serde(default, with = "as_list")]
    pub instances: BTreeMap<Key, Maint>,
}

/// Why a change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// The service or instance is not one of this announcer's.
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
}

impl MaintState {
    /// The switch that puts `key` into maintenance, if any: its own, else the host's.
    pub fn effective(&self, key: &Key) -> Option<&Maint> {
        self.instances.get(key).or(self.host.as_ref())
    }

    /// Applies `change`; `configured` lists this announcer's instances (a service or instance
    /// switched on must be one of them; switching off an entry left over from an earlier
    /// config is allowed). Returns whether anything changed.
    pub fn apply(&mut self, change: &Change, configured: &[Key], now_ms: u64) -> Result<bool, ChangeError> {
        let reason = match change.reason.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(_) if !change.on => return Err(ChangeError::Invalid("a reason goes with `on` only".into())),
            Some(r) if r.len() > MAX_REASON_LEN => return Err(ChangeError::Invalid(format!("the reason is {} bytes, the limit is {MAX_REASON_LEN}", r.len()))),
            Some(r) if r.chars().any(char::is_control) => return Err(ChangeError::Invalid("the reason has control characters".into())),
            Some(r) => Some(r.to_string()),
        };
        // Switched on again: the reason is replaced, the time it started is kept.
        let on = |old: Option<&Maint>| Maint { reason: reason.clone(), since_ms: old.map_or(now_ms, |m| m.since_ms) };
        let before = self.clone();
        match &change.target {
            Target::Host if change.on => self.host = Some(on(self.host.as_ref())),
            Target::Host => self.host = None,
            Target::Service(s) => {
                let keys: Vec<Key> = configured.iter().filter(|k| &k.0 == s).cloned().collect();
                if change.on {
                    if keys.is_empty() {
                        return Err(ChangeError::NotFound(format!("this announcer has no instance of service {s:?}")));
                    }
                    for k in keys {
                        let m = on(self.instances.get(&k));
                        self.instances.insert(k, m);
                    }
                } else {
                    if keys.is_empty() && !self.instances.keys().any(|k| &k.0 == s) {
                        return Err(ChangeError::NotFound(format!("this announcer has no instance of service {s:?}")));
                    }
                    self.instances.retain(|k, _| &k.0 != s);
                }
            }
            Target::Instance(s, i) => {
                let key = (s.clone(), i.clone());
                let known = configured.contains(&key);
                if change.on {
                    if !known {
                        return Err(ChangeError::NotFound(format!("this announcer has no instance {s}/{i}")));
                    }
                    let m = on(self.instances.get(&key));
                    self.instances.insert(key, m);
                } else if self.instances.remove(&key).is_none() && !known {
                    return Err(ChangeError::NotFound(format!("this announcer has no instance {s}/{i}")));
                }
            }
        }
        Ok(*self != before)
    }
}

/// The maintenance file: `load` at start, `save` on every change.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
}

impl Store {
    pub fn new(state_dir: &Path) -> Store {
        Store { path: state_dir.join(FILE_NAME) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state; no file is no maintenance. A file that cannot be read is an error
    /// naming it: starting out of maintenance would put back into rotation what an operator
    /// took out.
    pub fn load(&self) -> Result<MaintState, String> {
        match std::fs::read(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(MaintState::default()),
            Err(e) => Err(format!("{}: {e}", self.path.display())),
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e} (fix or remove it)", self.path.display())),
        }
    }

    /// Replaces the file atomically: a temporary file beside it, written and fsynced, renamed
    /// over it, and the directory fsynced. The directory is created if missing.
    pub fn save(&self, state: &MaintState) -> Result<(), String> {
        let fail = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
        let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| fail("creating", dir, e))?;
        let mut tmp = tempfile::Builder::new().prefix(&format!(".{FILE_NAME}.")).tempfile_in(dir).map_err(|e| fail("creating a file in", dir, e))?;
        let body = serde_json::to_vec_pretty(state).expect("serializable");
        tmp.write_all(&body).and_then(|_| tmp.write_all(b"\n")).and_then(|_| tmp.as_file().sync_all()).map_err(|e| fail("writing", tmp.path(), e))?;
        tmp.persist(&self.path).map_err(|e| fail("renaming into", &self.path, e.error))?;
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| fail("fsync", dir, e))
    }
}

/// Milliseconds since the Unix epoch, for `since_ms`.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The instances as a list of `{"service", "instance", "reason", "since_ms"}` objects.
mod as_list {
    use super::*;
    use serde::{Deserializer, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Entry {
        service: String,
        instance: String,
        #[serde(flatten)]
        maint: Maint,
    }

    pub fn serialize<S: Serializer>(map: &BTreeMap<Key, Maint>, s: S) -> Result<S::Ok, S::Error> {
        let list: Vec<Entry> =
            map.iter().map(|((service, instance), m)| Entry { service: service.clone(), instance: instance.clone(), maint: m.clone() }).collect();
        list.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<Key, Maint>, D::Error> {
        let list = Vec::<Entry>::deserialize(d)?;
        Ok(list.into_iter().map(|e| ((e.service, e.instance), e.maint)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str, i: &str) -> Key {
        (s.to_string(), i.to_string())
    }

    fn change(on: bool, target: Target, reason: Option<&str>) -> Change {
        Change { on, target, reason: reason.map(str::to_string) }
    }

    #[test]
    fn host_and_instance_switches_are_independent_and_the_instance_reason_wins() {
        let configured = [key("web", "a"), key("web", "b"), key("api", "a")];
        let mut m = MaintState::default();
        assert!(m.apply(&change(true, Target::Instance("web".into(), "a".into()), Some("disk swap")), &configured, 10).unwrap());
        assert_eq!(m.effective(&key("web", "a")).and_then(|x| x.reason.as_deref()), Some("disk swap"));
        assert_eq!(m.effective(&key("web", "b")), None);
        m.apply(&change(true, Target::Host, Some("kernel")), &configured, 20).unwrap();
        assert_eq!(m.effective(&key("web", "a")).and_then(|x| x.reason.as_deref()), Some("disk swap"));
        assert_eq!(m.effective(&key("api", "a")).and_then(|x| x.reason.as_deref()), Some("kernel"));
        m.apply(&change(false, Target::Host, None), &configured, 30).unwrap();
        assert!(m.effective(&key("web", "a")).is_some(), "host off ended an instance's own maintenance");
        assert_eq!(m.effective(&key("api", "a")), None);
        // On again: the reason changes, the start time stays.
        m.apply(&change(true, Target::Instance("web".into(), "a".into()), Some("still")), &configured, 40).unwrap();
        assert_eq!(m.instances[&key("web", "a")], Maint { reason: Some("still".into()), since_ms: 10 });
        assert!(!m.apply(&change(true, Target::Instance("web".into(), "a".into()), Some("still")), &configured, 50).unwrap(), "no change");
    }

    #[test]
    fn a_service_switch_covers_its_configured_instances() {
        let configured = [key("web", "a"), key("web", "b"), key("api", "a")];
        let mut m = MaintState::default();
        m.apply(&change(true, Target::Service("web".into()), None), &configured, 1).unwrap();
        assert_eq!(m.instances.keys().cloned().collect::<Vec<_>>(), vec![key("web", "a"), key("web", "b")]);
        m.apply(&change(false, Target::Service("web".into()), None), &configured, 2).unwrap();
        assert!(m.instances.is_empty());
    }

    #[test]
    fn unknown_targets_and_bad_reasons_are_refused() {
        let configured = [key("web", "a")];
        let mut m = MaintState::default();
        let err = |m: &mut MaintState, c: Change| m.apply(&c, &configured, 1).unwrap_err();
        assert!(matches!(err(&mut m, change(true, Target::Instance("web".into(), "zz".into()), None)), ChangeError::NotFound(_)));
        assert!(matches!(err(&mut m, change(true, Target::Service("nope".into()), None)), ChangeError::NotFound(_)));
        assert!(matches!(err(&mut m, change(false, Target::Instance("web".into(), "zz".into()), None)), ChangeError::NotFound(_)));
        assert!(matches!(err(&mut m, change(true, Target::Host, Some(&"x".repeat(MAX_REASON_LEN + 1)))), ChangeError::Invalid(_)));
        assert!(matches!(err(&mut m, change(true, Target::Host, Some("a\nb"))), ChangeError::Invalid(_)));
        assert!(matches!(err(&mut m, change(false, Target::Host, Some("why"))), ChangeError::Invalid(_)));
        assert_eq!(m, MaintState::default(), "a refused change changed the state");
        // An entry left from an earlier config can still be switched off.
        m.instances.insert(key("old", "x"), Maint { reason: None, since_ms: 1 });
        m.apply(&change(false, Target::Instance("old".into(), "x".into()), None), &configured, 2).unwrap();
        assert!(m.instances.is_empty());
    }

    #[test]
    fn the_file_round_trips_atomically_and_a_bad_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(&dir.path().join("state"));
        assert_eq!(store.load().unwrap(), MaintState::default(), "no file is no maintenance");
        let mut m = MaintState { host: Some(Maint { reason: Some("kernel".into()), since_ms: 5 }), ..Default::default() };
        m.instances.insert(key("web", "10.0.0.5:8080"), Maint { reason: None, since_ms: 6 });
        store.save(&m).unwrap();
        assert_eq!(store.load().unwrap(), m);
        let names: Vec<_> = std::fs::read_dir(dir.path().join("state")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from(FILE_NAME)], "a temporary file was left behind");
        let text = std::fs::read_to_string(store.path()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["instances"][0], serde_json::json!({"service": "web", "instance": "10.0.0.5:8080", "since_ms": 6}));
        assert_eq!(v["host"]["reason"], "kernel");
        std::fs::write(store.path(), "{not json").unwrap();
        assert!(store.load().unwrap_err().contains(FILE_NAME));
    }
}
