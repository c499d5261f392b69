//! Config-file rules the three binaries share.
//!
//! - A file key is its flag's name with `_` for `-` (`--drain-timeout` is `drain_timeout`);
//!   flags that start a one-time action (`--config`, the registry's `--join`) have no key.
//! - A list may be written as a TOML list or as one comma-separated string, as on the command
//!   line: `registry = ["http://a:7401", "http://b:7401"]` or `registry = "http://a:7401,http://b:7401"`.

use serde::{Deserialize, Deserializer};

/// A list of strings from a TOML list or a comma-separated string; entries are trimmed and
/// empty ones dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StringList(pub Vec<String>);

impl<'de> Deserialize<'de> for StringList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<StringList, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            List(Vec<String>),
            One(String),
        }
        let items = match Raw::deserialize(d).map_err(|_| serde::de::Error::custom("expected a list of strings, or one comma-separated string"))? {
            Raw::List(v) => v,
            Raw::One(s) => s.split(',').map(str::to_string).collect(),
        };
        Ok(StringList(items.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()))
    }
}

/// The effective settings `<binary> config check` prints: one `key = value` line each, keys
/// as in the file. Secrets are given as the paths they are read from, never their contents.
pub fn render_settings(settings: &[(String, String)]) -> String {
    let width = settings.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    settings.iter().map(|(k, v)| format!("{k:<width$} = {v}\n")).collect()
}

/// An optional setting for `render_settings`: its value, or `(none)`.
pub fn or_none<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "(none)".to_string(), |v| v.to_string())
}

impl StringList {
    pub fn into_vec(self) -> Vec<String> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct F {
        l: StringList,
    }

    fn parse(text: &str) -> Result<Vec<String>, String> {
        toml::from_str::<F>(text).map(|f| f.l.0).map_err(|e| e.to_string())
    }

    #[test]
    fn a_list_or_a_comma_separated_string() {
        assert_eq!(parse(r#"l = ["a", " b "]"#).unwrap(), vec!["a", "b"]);
        assert_eq!(parse(r#"l = "a, b,,c""#).unwrap(), vec!["a", "b", "c"]);
        assert!(parse("l = 3").unwrap_err().contains("comma-separated"));
    }
}
