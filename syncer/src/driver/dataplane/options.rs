//! `--server-options` for the Data Plane API: HAProxy server keywords mapped onto the fields
//! of its server models.

use serde_json::{json, Map, Value};

/// The server options of `--server-options` that the Data Plane API models can carry, both in
/// `runtime_add_server` and in the configuration `server` (`server_params`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct ServerOptions {
    pub(super) fields: Map<String, Value>,
}

impl ServerOptions {
    /// Parses HAProxy server keywords (`check inter 1s fall 2 rise 1`) into model fields.
    pub(super) fn parse(text: &str) -> anyhow::Result<ServerOptions> {
        let mut fields = Map::new();
        let mut words = text.split_whitespace();
        while let Some(w) = words.next() {
            let mut value = |what: &str| words.next().ok_or_else(|| anyhow::anyhow!("server option `{w}` needs {what}"));
            match w {
                "check" => {
                    fields.insert("check".into(), json!("enabled"));
                }
                "no-check" => {
                    fields.insert("check".into(), json!("disabled"));
                }
                "inter" | "fastinter" | "downinter" => {
                    let v = value("a duration")?;
                    fields.insert(w.into(), json!(parse_ms(v)?));
                }
                "fall" | "rise" | "maxconn" | "maxqueue" | "minconn" => {
                    let v = value("a number")?;
                    let n: i64 = v.parse().map_err(|_| anyhow::anyhow!("server option `{w}`: `{v}` is not a number"))?;
                    fields.insert(w.into(), json!(n));
                }
                other => anyhow::bail!(
                    "server option `{other}` is not supported with the Data Plane API driver (supported: check, no-check, inter, fastinter, downinter, fall, rise, maxconn, maxqueue, minconn)"
                ),
            }
        }
        Ok(ServerOptions { fields })
    }

    /// These options plus the fields every server model has (`name`, `address`, `port`,
    /// `weight`); the caller adds what is particular to its model.
    pub(super) fn server(&self, name: &str, address: &str, port: u16, weight: u32) -> Map<String, Value> {
        let mut body = self.fields.clone();
        body.insert("name".into(), json!(name));
        body.insert("address".into(), json!(address));
        body.insert("port".into(), json!(port));
        body.insert("weight".into(), json!(weight));
        body
    }
}

/// `1s`, `500ms`, `2m`, `1h`, or a bare number of milliseconds (HAProxy's default unit).
fn parse_ms(text: &str) -> anyhow::Result<u64> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: u64 = num.parse().map_err(|_| anyhow::anyhow!("`{text}` is not a duration"))?;
    let factor = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => anyhow::bail!("`{text}` is not a duration (use ms, s, m, h or d)"),
    };
    Ok(n * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_options_map_to_model_fields() {
        let o = ServerOptions::parse("check inter 1s fall 2 rise 1").unwrap();
        assert_eq!(Value::Object(o.fields), json!({"check": "enabled", "inter": 1000, "fall": 2, "rise": 1}));
        assert!(ServerOptions::parse("check ssl verify none").is_err());
        assert!(ServerOptions::parse("inter").is_err());
        assert_eq!(parse_ms("250ms").unwrap(), 250);
        assert_eq!(parse_ms("2m").unwrap(), 120_000);
        assert_eq!(parse_ms("100").unwrap(), 100);
    }
}
