//! The Data Plane API specs as data, and a validator of requests (and responses) against them.
//!
//! Reads `dataplaneapi-v3.4-openapi.yaml` (OpenAPI 3, base path `/v3`) and
//! `dataplaneapi-v2.9-swagger.json` (Swagger 2, base path `/v2`) from
//! `<workspace>/../shared/reference`, or from `DATAPLANE_SPEC_DIR`.
//!
//! What is checked for a request:
//! - the path (after the base path) matches one of the spec's path templates and the method is
//!   one of that path's operations; path parameters are checked against their schemas;
//! - query parameters: required ones present, every value of the declared type (integer,
//!   boolean, string with enum/pattern, ...), and unknown ones rejected;
//! - the body: present when required, absent when the operation takes none, `application/json`,
//!   and valid against the operation's schema with `$ref`s resolved: `type`, `enum`, `pattern`,
//!   `minimum`/`maximum`, `minLength`/`maxLength`, `required`, `properties`, `items`,
//!   `additionalProperties`, `allOf`/`anyOf`/`oneOf`, `nullable`/`x-nullable`;
//! - basic auth is present (both specs require `basic_auth`).
//!
//! Deliberate choices and limits:
//! - Request bodies are checked STRICTLY: a property no schema (nor any `allOf` member) declares
//!   is a violation, although OpenAPI would allow it, because the real API silently ignores it
//!   (a typo would go unnoticed). `additionalProperties: false` next to `allOf` (the `server`
//!   model) is read as go-swagger does: allowed = the union of the members' properties.
//! - `readOnly` is NOT enforced in requests: the specs mark `name`, `address` and `port` of
//!   `runtime_add_server` read-only, yet the API needs them to add a server.
//! - `format`, `x-dependency`, `x-duration` and header parameters are not checked; patterns the
//!   `regex` crate cannot compile are skipped.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;

/// Which API version (and spec) a double serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiVersion {
    V2,
    V3,
}

impl ApiVersion {
    pub fn base_path(self) -> &'static str {
        match self {
            ApiVersion::V2 => "/v2",
            ApiVersion::V3 => "/v3",
        }
    }
}

/// Where the specs are: `DATAPLANE_SPEC_DIR`, else `<workspace>/../shared/reference`.
pub fn spec_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DATAPLANE_SPEC_DIR") {
        return PathBuf::from(d);
    }
    // This crate is `<workspace>/tests`.
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("..").join("shared").join("reference")
}

/// A path template: literal segments (`None` = a `{parameter}`), parameter names, the text.
type PathTemplate = (Vec<Option<String>>, Vec<String>, String);

/// A loaded spec.
pub struct Spec {
    pub version: ApiVersion,
    root: Value,
    /// Path templates split into segments (`None` = a `{parameter}`), with the template text.
    paths: Vec<PathTemplate>,
    regexes: Mutex<BTreeMap<String, Option<regex::Regex>>>,
}

/// The operation a request maps to.
pub struct Operation<'a> {
    pub id: String,
    pub template: String,
    pub path_params: BTreeMap<String, String>,
    op: &'a Value,
}

/// A request as the validator sees it.
pub struct Request<'a> {
    pub method: &'a str,
    /// The path after the base path, still percent-encoded.
    pub path: &'a str,
    pub query: &'a [(String, String)],
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

impl Spec {
    /// The spec of `version`, loaded once per process.
    pub fn get(version: ApiVersion) -> Arc<Spec> {
        static V2: OnceLock<Arc<Spec>> = OnceLock::new();
        static V3: OnceLock<Arc<Spec>> = OnceLock::new();
        let cell = match version {
            ApiVersion::V2 => &V2,
            ApiVersion::V3 => &V3,
        };
        cell.get_or_init(|| Arc::new(Spec::load(version).unwrap_or_else(|e| panic!("{e}")))).clone()
    }

    pub fn load(version: ApiVersion) -> Result<Spec, String> {
        let dir = spec_dir();
        let root: Value = match version {
            ApiVersion::V3 => {
                let p = dir.join("dataplaneapi-v3.4-openapi.yaml");
                let text = std::fs::read_to_string(&p).map_err(|e| format!("reading {}: {e} (set DATAPLANE_SPEC_DIR)", p.display()))?;
                serde_yaml::from_str(&text).map_err(|e| format!("parsing {}: {e}", p.display()))?
            }
            ApiVersion::V2 => {
                let p = dir.join("dataplaneapi-v2.9-swagger.json");
                let text = std::fs::read_to_string(&p).map_err(|e| format!("reading {}: {e} (set DATAPLANE_SPEC_DIR)", p.display()))?;
                serde_json::from_str(&text).map_err(|e| format!("parsing {}: {e}", p.display()))?
            }
        };
        let base = match version {
            ApiVersion::V3 => root.pointer("/servers/0/url").and_then(Value::as_str),
            ApiVersion::V2 => root.get("basePath").and_then(Value::as_str),
        };
        if base != Some(version.base_path()) {
            return Err(format!("spec for {version:?} has base path {base:?}, expected {}", version.base_path()));
        }
        let mut paths = Vec::new();
        for template in root.get("paths").and_then(Value::as_object).ok_or("spec without paths")?.keys() {
            let segs: Vec<Option<String>> =
                template.trim_start_matches('/').split('/').map(|s| if s.starts_with('{') { None } else { Some(s.to_string()) }).collect();
            let names: Vec<String> = template.trim_start_matches('/').split('/').map(|s| s.trim_start_matches('{').trim_end_matches('}').to_string()).collect();
            paths.push((segs, names, template.clone()));
        }
        Ok(Spec { version, root, paths, regexes: Mutex::new(BTreeMap::new()) })
    }

    fn oas3(&self) -> bool {
        self.version == ApiVersion::V3
    }

    /// Follows `$ref`s (local JSON pointers only).
    fn resolve<'a>(&'a self, mut v: &'a Value) -> &'a Value {
        for _ in 0..32 {
            match v.get("$ref").and_then(Value::as_str) {
                Some(r) => match r.strip_prefix('#').and_then(|p| self.root.pointer(p)) {
                    Some(t) => v = t,
                    None => return &Value::Null,
                },
                None => return v,
            }
        }
        v
    }

    /// The operation for `method` and `path` (after the base path), if the spec has one.
    pub fn find(&self, method: &str, path: &str) -> Result<Operation<'_>, String> {
        let segs: Vec<String> = path.trim_start_matches('/').split('/').map(percent_decode).collect();
        // Prefer the template with the most literal segments (`/a/b` over `/a/{x}`).
        let mut best: Option<(usize, &PathTemplate)> = None;
        for entry in &self.paths {
            let (tsegs, _, _) = entry;
            if tsegs.len() != segs.len() {
                continue;
            }
            let ok = tsegs.iter().zip(&segs).all(|(t, s)| match t {
                Some(lit) => lit == s,
                None => !s.is_empty(),
            });
            if ok {
                let literal = tsegs.iter().filter(|t| t.is_some()).count();
                if best.is_none_or(|(n, _)| literal > n) {
                    best = Some((literal, entry));
                }
            }
        }
        let (_, (tsegs, names, template)) = best.ok_or_else(|| format!("no path in the {:?} spec matches {path}", self.version))?;
        let item = &self.root["paths"][template.as_str()];
        let op = item.get(method.to_ascii_lowercase()).ok_or_else(|| format!("{method} is not an operation of {template} in the {:?} spec", self.version))?;
        let mut path_params = BTreeMap::new();
        for ((t, n), s) in tsegs.iter().zip(names).zip(&segs) {
            if t.is_none() {
                path_params.insert(n.clone(), s.clone());
            }
        }
        let id = op.get("operationId").and_then(Value::as_str).unwrap_or("").to_string();
        Ok(Operation { id, template: template.clone(), path_params, op })
    }

    /// Every way `req` breaks the spec (empty: valid); also the operation when there is one.
    pub fn validate_request<'a>(&'a self, req: &Request) -> (Option<Operation<'a>>, Vec<String>) {
        let mut errs = Vec::new();
        let op = match self.find(req.method, req.path) {
            Ok(op) => op,
            Err(e) => return (None, vec![e]),
        };
        let item = &self.root["paths"][op.template.as_str()];
        let mut params: Vec<&Value> = Vec::new();
        for list in [item.get("parameters"), op.op.get("parameters")].into_iter().flatten() {
            for p in list.as_array().into_iter().flatten() {
                params.push(self.resolve(p));
            }
        }
        let mut body_schema: Option<(&Value, bool)> = None;
        let mut known_query = Vec::new();
        for p in &params {
            let name = p.get("name").and_then(Value::as_str).unwrap_or("");
            let required = p.get("required").and_then(Value::as_bool).unwrap_or(false);
            let schema = if self.oas3() { p.get("schema").unwrap_or(&Value::Null) } else { *p };
            match p.get("in").and_then(Value::as_str) {
                Some("path") => {
                    let v = op.path_params.get(name).cloned().unwrap_or_default();
                    self.check_param(&format!("path parameter {name}"), &v, schema, &mut errs);
                }
                Some("query") => {
                    known_query.push(name);
                    let values: Vec<&String> = req.query.iter().filter(|(k, _)| k == name).map(|(_, v)| v).collect();
                    if values.is_empty() && required {
                        errs.push(format!("required query parameter `{name}` is missing"));
                    }
                    if values.len() > 1 && self.resolve(schema).get("type").and_then(Value::as_str) != Some("array") {
                        errs.push(format!("query parameter `{name}` is given {} times", values.len()));
                    }
                    for v in values {
                        self.check_param(&format!("query parameter {name}"), v, schema, &mut errs);
                    }
                }
                Some("body") => body_schema = Some((p.get("schema").unwrap_or(&Value::Null), required)),
                _ => {}
            }
        }
        for (k, _) in req.query {
            if !known_query.contains(&k.as_str()) {
                errs.push(format!("unknown query parameter `{k}` for {} {}", req.method, op.template));
            }
        }
        if self.oas3() {
            if let Some(rb) = op.op.get("requestBody").map(|r| self.resolve(r)) {
                let required = rb.get("required").and_then(Value::as_bool).unwrap_or(false);
                let schema = rb.pointer("/content/application~1json/schema").unwrap_or(&Value::Null);
                body_schema = Some((schema, required));
            }
        }
        match body_schema {
            None if !req.body.is_empty() => errs.push(format!("{} {} takes no body", req.method, op.template)),
            None => {}
            Some((_, true)) if req.body.is_empty() => errs.push(format!("{} {} needs a body", req.method, op.template)),
            Some((_, false)) if req.body.is_empty() => {}
            Some((schema, _)) => {
                if !req.content_type.is_some_and(|c| c.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json")) {
                    errs.push(format!("body content type is {:?}, not application/json", req.content_type));
                }
                match serde_json::from_slice::<Value>(req.body) {
                    Ok(v) => self.check(&v, schema, "body", true, &mut errs),
                    Err(e) => errs.push(format!("body is not JSON: {e}")),
                }
            }
        }
        (Some(op), errs)
    }

    /// Checks a response the double sends (what a real API would send, per the spec).
    pub fn validate_response(&self, op: &Operation, status: u16, body: &[u8]) -> Vec<String> {
        let mut errs = Vec::new();
        let responses = &op.op["responses"];
        let Some(r) = responses.get(status.to_string()).or_else(|| responses.get("default")) else {
            return vec![format!("{} {}: status {status} is not documented", op.id, op.template)];
        };
        let r = self.resolve(r);
        let schema = if self.oas3() { r.pointer("/content/application~1json/schema") } else { r.get("schema") };
        match schema {
            Some(s) if body.is_empty() => errs.push(format!("{}: response {status} needs a body ({s})", op.id)),
            Some(s) => match serde_json::from_slice::<Value>(body) {
                Ok(v) => self.check(&v, s, &format!("{} response {status}", op.id), false, &mut errs),
                Err(e) => errs.push(format!("{}: response {status} is not JSON: {e}", op.id)),
            },
            None if !body.is_empty() => errs.push(format!("{}: response {status} takes no body", op.id)),
            None => {}
        }
        errs
    }

    /// A path or query parameter (text) against its schema.
    fn check_param(&self, what: &str, raw: &str, schema: &Value, errs: &mut Vec<String>) {
        let s = self.resolve(schema);
        let v = match s.get("type").and_then(Value::as_str) {
            Some("integer") => match raw.parse::<i64>() {
                Ok(n) => Value::from(n),
                Err(_) => return errs.push(format!("{what}: `{raw}` is not an integer")),
            },
            Some("number") => match raw.parse::<f64>() {
                Ok(n) => Value::from(n),
                Err(_) => return errs.push(format!("{what}: `{raw}` is not a number")),
            },
            Some("boolean") => match raw {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => return errs.push(format!("{what}: `{raw}` is not true or false")),
            },
            Some("array") => Value::Array(raw.split(',').map(|x| Value::String(x.to_string())).collect()),
            _ => Value::String(raw.to_string()),
        };
        self.check(&v, s, what, false, errs);
    }

    fn regex(&self, pattern: &str) -> Option<regex::Regex> {
        let mut cache = self.regexes.lock().unwrap();
        cache.entry(pattern.to_string()).or_insert_with(|| regex::Regex::new(pattern).ok()).clone()
    }

    /// Names of the properties `s` declares, with those of its `allOf` members.
    fn declared(&self, s: &Value, out: &mut Vec<String>) {
        let s = self.resolve(s);
        if let Some(p) = s.get("properties").and_then(Value::as_object) {
            out.extend(p.keys().cloned());
        }
        for m in s.get("allOf").and_then(Value::as_array).into_iter().flatten() {
            self.declared(m, out);
        }
    }

    /// `v` against `schema`; `strict`: properties nothing declares are violations.
    pub fn check(&self, v: &Value, schema: &Value, at: &str, strict: bool, errs: &mut Vec<String>) {
        self.check_inner(v, schema, at, strict, true, errs);
    }

    fn check_inner(&self, v: &Value, schema: &Value, at: &str, strict: bool, check_unknown: bool, errs: &mut Vec<String>) {
        let s = self.resolve(schema);
        if !s.is_object() {
            return;
        }
        if v.is_null() {
            let nullable = s.get("nullable").and_then(Value::as_bool).unwrap_or(false) || s.get("x-nullable").and_then(Value::as_bool).unwrap_or(false);
            if !nullable && s.get("type").is_some() {
                errs.push(format!("{at}: null is not allowed"));
            }
            return;
        }
        for m in s.get("allOf").and_then(Value::as_array).into_iter().flatten() {
            self.check_inner(v, m, at, strict, false, errs);
        }
        for (key, exactly_one) in [("anyOf", false), ("oneOf", true)] {
            if let Some(alts) = s.get(key).and_then(Value::as_array) {
                let passing = alts
                    .iter()
                    .filter(|alt| {
                        let mut e = Vec::new();
                        self.check_inner(v, alt, at, strict, true, &mut e);
                        e.is_empty()
                    })
                    .count();
                if passing == 0 || (exactly_one && passing > 1) {
                    errs.push(format!("{at}: matches {passing} of the {key} alternatives"));
                }
            }
        }
        if let Some(e) = s.get("enum").and_then(Value::as_array) {
            if !e.contains(v) {
                errs.push(format!("{at}: {v} is not one of {}", Value::Array(e.clone())));
            }
        }
        let implied_object = v.is_object() && (s.get("properties").is_some() || s.get("allOf").is_some());
        let ty = s.get("type").and_then(Value::as_str).or(if implied_object { Some("object") } else { None });
        match ty {
            Some("object") => {
                let Some(obj) = v.as_object() else {
                    return errs.push(format!("{at}: expected an object, got {v}"));
                };
                for r in s.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
                    if !obj.contains_key(r) {
                        errs.push(format!("{at}: required property `{r}` is missing"));
                    }
                }
                let props = s.get("properties").and_then(Value::as_object);
                let additional = s.get("additionalProperties");
                let mut declared = Vec::new();
                if check_unknown {
                    self.declared(s, &mut declared);
                }
                for (k, pv) in obj {
                    let here = format!("{at}.{k}");
                    if let Some(ps) = props.and_then(|p| p.get(k)) {
                        self.check_inner(pv, ps, &here, strict, true, errs);
                    } else if let Some(a) = additional.filter(|a| a.is_object()) {
                        self.check_inner(pv, a, &here, strict, true, errs);
                    } else if check_unknown && !declared.iter().any(|d| d == k) && (strict || additional == Some(&Value::Bool(false))) {
                        errs.push(format!("{here}: no such property in the schema"));
                    }
                }
            }
            Some("array") => {
                let Some(items) = v.as_array() else {
                    return errs.push(format!("{at}: expected an array, got {v}"));
                };
                if let Some(n) = s.get("minItems").and_then(Value::as_u64) {
                    if (items.len() as u64) < n {
                        errs.push(format!("{at}: fewer than {n} items"));
                    }
                }
                if let Some(n) = s.get("maxItems").and_then(Value::as_u64) {
                    if (items.len() as u64) > n {
                        errs.push(format!("{at}: more than {n} items"));
                    }
                }
                if let Some(is) = s.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.check_inner(item, is, &format!("{at}[{i}]"), strict, true, errs);
                    }
                }
            }
            Some("string") => {
                let Some(text) = v.as_str() else {
                    return errs.push(format!("{at}: expected a string, got {v}"));
                };
                if let Some(p) = s.get("pattern").and_then(Value::as_str) {
                    if let Some(re) = self.regex(p) {
                        if !re.is_match(text) {
                            errs.push(format!("{at}: `{text}` does not match {p}"));
                        }
                    }
                }
                let len = text.chars().count() as u64;
                if s.get("minLength").and_then(Value::as_u64).is_some_and(|n| len < n) {
                    errs.push(format!("{at}: shorter than minLength"));
                }
                if s.get("maxLength").and_then(Value::as_u64).is_some_and(|n| len > n) {
                    errs.push(format!("{at}: longer than maxLength"));
                }
            }
            Some("integer") | Some("number") => {
                let is_int = v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0);
                if !v.is_number() || (ty == Some("integer") && !is_int) {
                    return errs.push(format!("{at}: expected {}, got {v}", ty.unwrap()));
                }
                let n = v.as_f64().unwrap_or(0.0);
                if s.get("minimum").and_then(Value::as_f64).is_some_and(|m| n < m) {
                    errs.push(format!("{at}: {v} is below the minimum {}", s["minimum"]));
                }
                if s.get("maximum").and_then(Value::as_f64).is_some_and(|m| n > m) {
                    errs.push(format!("{at}: {v} is above the maximum {}", s["maximum"]));
                }
            }
            Some("boolean") if !v.is_boolean() => errs.push(format!("{at}: expected a boolean, got {v}")),
            _ => {}
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(x) = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                out.push(x);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
