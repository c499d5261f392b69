//! HAProxy's process identity as the Data Plane API shows it (`runtime/info`).

use serde_json::Value;

use crate::driver::{DriverError, Generation};

/// The pid and uptime in a `runtime/info` answer (v3: one `process_info`; v2: an array of them,
/// one per runtime API, of which the first counts).
pub(super) fn process_identity(v: &Value) -> Result<(i64, Option<i64>), DriverError> {
    let first = match v {
        Value::Array(items) => items.first().cloned().unwrap_or(Value::Null),
        other => other.clone(),
    };
    if let Some(err) = first.get("error").and_then(Value::as_str).filter(|e| !e.is_empty()) {
        return Err(DriverError::Unreachable(format!("process info: {err}")));
    }
    let info = first.get("info").ok_or_else(|| DriverError::Protocol(format!("process info without `info`: {v}")))?;
    let pid = info.get("pid").and_then(Value::as_i64).ok_or_else(|| DriverError::Protocol(format!("process info without a pid: {v}")))?;
    Ok((pid, info.get("uptime").and_then(Value::as_i64)))
}

/// Watches `runtime/info` for a new process (pid) or the same pid with a smaller uptime.
#[derive(Debug, Default)]
pub(super) struct GenerationTracker {
    last: Option<(i64, Option<i64>)>,
    epoch: u64,
}

impl GenerationTracker {
    pub(super) fn observe(&mut self, pid: i64, uptime: Option<i64>) -> Generation {
        if let Some((last_pid, last_uptime)) = self.last {
            let restarted_same_pid = last_pid == pid && matches!((last_uptime, uptime), (Some(a), Some(b)) if b < a);
            if restarted_same_pid {
                self.epoch += 1;
            }
        }
        self.last = Some((pid, uptime));
        Generation(format!("pid={pid};epoch={}", self.epoch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_changes_on_new_pid_or_uptime_going_back() {
        let mut g = GenerationTracker::default();
        let a = g.observe(10, Some(100));
        assert_eq!(g.observe(10, Some(101)), a);
        let b = g.observe(11, Some(0));
        assert_ne!(a, b);
        let c = g.observe(11, Some(5));
        assert_eq!(b, c);
        assert_ne!(g.observe(11, Some(1)), c, "same pid but uptime went back: a restart");
    }

    #[test]
    fn process_identity_from_v3_and_v2_answers() {
        use serde_json::json;
        assert_eq!(process_identity(&json!({"info": {"pid": 7, "uptime": 3}})).unwrap(), (7, Some(3)));
        assert_eq!(process_identity(&json!([{"info": {"pid": 8}}, {"info": {"pid": 9}}])).unwrap(), (8, None));
        assert!(matches!(process_identity(&json!([{"error": "socket closed"}])), Err(DriverError::Unreachable(_))));
        assert!(matches!(process_identity(&json!({"info": {}})), Err(DriverError::Protocol(_))));
    }
}
