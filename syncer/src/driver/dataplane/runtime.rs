//! The runtime half of the Data Plane API driver: the runtime server endpoints, which take
//! effect at once without a reload, and the driver's copy of what they hold. `servers()` reads
//! this side and the planner compares with it.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::client::ServerStats;
use super::DataplaneApi;
use crate::driver::DriverError;
use crate::model::{ActualServer, AdminState, Op};

impl DataplaneApi {
    pub(super) fn to_actual(&self, backend: &str, s: &Value, stats: &ServerStats) -> Result<ActualServer, DriverError> {
        let name = s.get("name").and_then(Value::as_str).ok_or_else(|| DriverError::Protocol(format!("runtime server without a name: {s}")))?.to_string();
        let address = s.get("address").and_then(Value::as_str).unwrap_or("").to_string();
        let port = s.get("port").and_then(Value::as_u64).unwrap_or(0) as u16;
        let state = match s.get("admin_state").and_then(Value::as_str) {
            Some("ready") => AdminState::Ready,
            Some("drain") => AdminState::Drain,
            Some("maint") => AdminState::Maint,
            other => return Err(DriverError::Protocol(format!("server {name}: admin_state {other:?}"))),
        };
        let (sessions, stats_weight) = stats.get(&name).copied().unwrap_or((0, None));
        // v3 reports the user weight (`uweight`, or `weight`); v2's runtime model has none, so
        // take the configured weight, then the stats' weight.
        let runtime_weight = s.get("uweight").and_then(Value::as_u64).or_else(|| s.get("weight").and_then(Value::as_u64)).map(|w| w as u32);
        let config_weight = self.config.get(backend).and_then(|c| c.get(&name)).and_then(|c| c.get("weight")).and_then(Value::as_u64).map(|w| w as u32);
        let weight = runtime_weight.or(config_weight).or(stats_weight).unwrap_or(1);
        Ok(ActualServer { name, address, port, weight, state, sessions })
    }

    pub(super) async fn runtime_op(&mut self, backend: &str, op: &Op) -> Result<(), DriverError> {
        match op {
            Op::Add(d) => {
                let body = self.options.server(&d.name, &d.address, d.port, d.weight);
                let (path, query) = self.api.runtime_path(backend, None);
                let a = self.api.call(Method::POST, &path, &query, Some(&Value::Object(body))).await?;
                if !a.status.is_success() {
                    return Err(a.error(&format!("adding runtime server {backend}/{}", d.name)));
                }
                // A dynamic server starts in maintenance: bring it to its state.
                self.runtime_put(backend, &d.name, json!({ "admin_state": d.state.as_str() })).await?;
                let a = ActualServer { name: d.name.clone(), address: d.address.clone(), port: d.port, weight: d.weight, state: d.state, sessions: 0 };
                self.runtime.entry(backend.to_string()).or_default().insert(d.name.clone(), a);
            }
            Op::SetWeight { name, weight } => {
                // Only v3's runtime model has a weight; with v2 the weight goes to the
                // configuration only and takes effect at the reload its commit asks for.
                if self.api.v3() {
                    self.runtime_put(backend, name, json!({ "weight": weight })).await?;
                }
                if let Some(s) = self.runtime.get_mut(backend).and_then(|m| m.get_mut(name)) {
                    s.weight = *weight;
                }
            }
            Op::SetState { name, state } => {
                self.runtime_put(backend, name, json!({ "admin_state": state.as_str() })).await?;
                if let Some(s) = self.runtime.get_mut(backend).and_then(|m| m.get_mut(name)) {
                    s.state = *state;
                }
            }
            Op::Remove { name } => {
                let (path, query) = self.api.runtime_path(backend, Some(name));
                let a = self.api.call(Method::DELETE, &path, &query, None).await?;
                // 404: already gone, which is what was wanted. Anything else (typically the
                // server still has connections; the API forced it into maintenance) is a refusal.
                if !(a.status.is_success() || a.status == StatusCode::NOT_FOUND) {
                    return Err(DriverError::Refused(format!("deleting runtime server {backend}/{name}: {} {}", a.status.as_u16(), a.message())));
                }
                if let Some(m) = self.runtime.get_mut(backend) {
                    m.remove(name);
                }
            }
        }
        Ok(())
    }

    async fn runtime_put(&self, backend: &str, name: &str, body: Value) -> Result<(), DriverError> {
        let (path, query) = self.api.runtime_path(backend, Some(name));
        let a = self.api.call(Method::PUT, &path, &query, Some(&body)).await?;
        if !a.status.is_success() {
            return Err(a.error(&format!("changing runtime server {backend}/{name}")));
        }
        Ok(())
    }
}
