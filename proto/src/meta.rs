//! `Meta`: an instance's string-to-string metadata, as the registry stores and returns it.

use std::collections::BTreeMap;
use std::fmt;

use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Instance metadata: keys to values, sorted by key, each key once. On the wire it is a JSON
/// object, as a `BTreeMap<String, String>` would be (a repeated key keeps its last value).
///
/// A sorted vector rather than a map: an instance has a few entries, and a `BTreeMap`'s first
/// node takes about 550 bytes whatever it holds. With 100,000 instances in a registry that was
/// half of the store.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Meta(Vec<(String, String)>);

impl Meta {
    pub fn new() -> Meta {
        Meta::default()
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    pub fn get(&self, key: &str) -> Option<&String> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// Sets `key`; returns the value it replaced.
    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.reserve_exact(1);
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.find(key).ok().map(|i| self.0.remove(i).1)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.0.iter().cloned().collect()
    }
}

impl fmt::Debug for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl FromIterator<(String, String)> for Meta {
    /// A repeated key keeps its last value, as a map's `collect` does.
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Meta {
        iter.into_iter().collect::<BTreeMap<String, String>>().into()
    }
}

impl From<BTreeMap<String, String>> for Meta {
    fn from(m: BTreeMap<String, String>) -> Meta {
        let mut v: Vec<(String, String)> = m.into_iter().collect();
        v.shrink_to_fit();
        Meta(v)
    }
}

impl From<&BTreeMap<String, String>> for Meta {
    fn from(m: &BTreeMap<String, String>) -> Meta {
        Meta(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }
}

impl<const N: usize> From<[(String, String); N]> for Meta {
    fn from(entries: [(String, String); N]) -> Meta {
        entries.into_iter().collect()
    }
}

impl<'a> IntoIterator for &'a Meta {
    type Item = (&'a String, &'a String);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (String, String)>, fn(&'a (String, String)) -> (&'a String, &'a String)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl std::ops::Index<&str> for Meta {
    type Output = String;
    fn index(&self, key: &str) -> &String {
        self.get(key).unwrap_or_else(|| panic!("no meta key {key:?}"))
    }
}

impl Serialize for Meta {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Meta {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Meta, D::Error> {
        BTreeMap::<String, String>::deserialize(d).map(Meta::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(entries: &[(&str, &str)]) -> Meta {
        entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_json_is_a_maps_and_a_repeated_key_keeps_its_last_value() {
        let map: BTreeMap<String, String> = [("b".into(), "2".into()), ("a".into(), "1".into())].into();
        let meta = Meta::from(map.clone());
        assert_eq!(serde_json::to_string(&meta).unwrap(), serde_json::to_string(&map).unwrap());
        let back: Meta = serde_json::from_str(r#"{"z":"1","a":"x","z":"2","a":"y","m":"3"}"#).unwrap();
        let as_map: BTreeMap<String, String> = serde_json::from_str(r#"{"z":"1","a":"x","z":"2","a":"y","m":"3"}"#).unwrap();
        assert_eq!(back.to_map(), as_map);
        assert_eq!(back, m(&[("a", "y"), ("m", "3"), ("z", "2")]));
        assert!(serde_json::from_str::<Meta>(r#"{"a":1}"#).is_err(), "values are strings");
    }

    #[test]
    fn lookups_inserts_and_removals_keep_it_sorted() {
        let mut meta = m(&[("zone", "a"), ("rack", "r1")]);
        assert_eq!(meta.get("zone").map(String::as_str), Some("a"));
        assert_eq!(meta.insert("zone".into(), "b".into()).as_deref(), Some("a"));
        assert_eq!(meta.insert("host".into(), "h".into()), None);
        assert_eq!(meta.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["host", "rack", "zone"]);
        assert_eq!(meta.remove("rack").as_deref(), Some("r1"));
        assert!(!meta.contains_key("rack"));
        assert_eq!((meta.len(), meta["zone"].as_str()), (2, "b"));
        assert_eq!(format!("{meta:?}"), r#"{"host": "h", "zone": "b"}"#);
    }
}
