//! The syncer's Data Plane API driver against the spec-checking test double, for v3 and v2.
//! Every test ends with zero spec violations (requests) and zero response violations (double).

use e2e::dataplane_double::{ApiVersion, DataplaneDouble, PASSWORD, USER};
use syncer::config::DataplaneVersion;
use syncer::driver::dataplane::{DataplaneApi, ReloadStatus};
use syncer::driver::{Driver, DriverError};
use syncer::model::{ActualServer, AdminState, DesiredServer, Op};

const BACKEND: &str = "web-servers";
const OPTIONS: &str = "check inter 1s fall 2 rise 1";

async fn setup(api: ApiVersion) -> (DataplaneDouble, DataplaneApi) {
    let double = DataplaneDouble::start(api, &[BACKEND, "other"]).await;
    let version = match api {
        ApiVersion::V2 => DataplaneVersion::V2,
        ApiVersion::V3 => DataplaneVersion::V3,
    };
    let auth = syncer::config::DataplaneAuth { user: Some(USER.into()), password: Some(PASSWORD.into()), ca_file: None };
    let driver = DataplaneApi::new(&double.url(), version, auth, OPTIONS.into()).unwrap();
    (double, driver)
}

fn assert_clean(double: &DataplaneDouble) {
    let v = double.violations();
    assert!(v.is_empty(), "spec violations: {v:#?}");
    let r = double.response_violations();
    assert!(r.is_empty(), "the double answered outside the spec: {r:#?}");
}

fn server(name: &str, port: u16, weight: u32, state: AdminState) -> DesiredServer {
    DesiredServer { name: name.into(), address: "127.0.0.1".into(), port, weight, state }
}

fn find<'a>(servers: &'a [ActualServer], name: &str) -> Option<&'a ActualServer> {
    servers.iter().find(|s| s.name == name)
}

async fn round_trip(api: ApiVersion) {
    let (double, mut d) = setup(api).await;
    double.declare_server(BACKEND, "static1", "10.0.0.1", 80);

    let first = d.servers(BACKEND).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].name, "static1");

    // Add: runtime (brought out of maintenance) and configuration, with the server options.
    d.apply(BACKEND, &[Op::Add(server("sd-a", 8081, 10, AdminState::Ready)), Op::Add(server("sd-b", 8082, 5, AdminState::Maint))]).await.unwrap();
    let rt = double.runtime_servers(BACKEND);
    assert_eq!(rt["sd-a"].admin_state, "ready");
    assert_eq!(rt["sd-a"].weight, 10);
    assert_eq!(rt["sd-a"].port, Some(8081));
    assert_eq!(rt["sd-b"].admin_state, "maint");
    let cfg = double.config_servers(BACKEND);
    assert_eq!(
        cfg["sd-a"],
        serde_json::json!({"name": "sd-a", "address": "127.0.0.1", "port": 8081, "weight": 10, "maintenance": "disabled", "check": "enabled", "inter": 1000, "fall": 2, "rise": 1})
    );
    assert_eq!(cfg["sd-b"]["maintenance"], "enabled");
    assert!(cfg.contains_key("static1"));

    let now = d.servers(BACKEND).await.unwrap();
    assert_eq!(
        find(&now, "sd-a"),
        Some(&ActualServer { name: "sd-a".into(), address: "127.0.0.1".into(), port: 8081, weight: 10, state: AdminState::Ready, sessions: 0 })
    );
    assert_eq!(find(&now, "sd-b").unwrap().state, AdminState::Maint);

    // Weight and state.
    d.apply(BACKEND, &[Op::SetWeight { name: "sd-a".into(), weight: 20 }, Op::SetState { name: "sd-b".into(), state: AdminState::Ready }]).await.unwrap();
    let rt = double.runtime_servers(BACKEND);
    match api {
        ApiVersion::V3 => assert_eq!(rt["sd-a"].weight, 20),
        // v2's runtime model has no weight: it goes to the configuration (and the reload).
        ApiVersion::V2 => assert_eq!(rt["sd-a"].weight, 10),
    }
    assert_eq!(rt["sd-b"].admin_state, "ready");
    let cfg = double.config_servers(BACKEND);
    assert_eq!(cfg["sd-a"]["weight"], 20);
    assert_eq!(cfg["sd-b"]["maintenance"], "disabled");
    let now = d.servers(BACKEND).await.unwrap();
    assert_eq!(find(&now, "sd-a").unwrap().weight, 20);
    assert_eq!(find(&now, "sd-b").unwrap().state, AdminState::Ready);

    // Drain, with connections reported as sessions.
    d.apply(BACKEND, &[Op::SetState { name: "sd-a".into(), state: AdminState::Drain }]).await.unwrap();
    double.set_connections(BACKEND, "sd-a", 3);
    let now = d.servers(BACKEND).await.unwrap();
    assert_eq!(find(&now, "sd-a").unwrap().state, AdminState::Drain);
    assert_eq!(find(&now, "sd-a").unwrap().sessions, 3);
    assert_eq!(double.runtime_servers(BACKEND)["sd-a"].admin_state, "drain");
    assert_eq!(double.config_servers(BACKEND)["sd-a"]["maintenance"], "disabled", "drain is runtime-only");

    // Remove while connections remain: refused, nothing done, forced into maintenance.
    let commits_before = double.count_ok("commitTransaction");
    let err = d.apply(BACKEND, &[Op::Remove { name: "sd-a".into() }]).await.unwrap_err();
    assert_eq!(err.0, 0);
    assert!(matches!(err.1, DriverError::Refused(ref m) if m.contains("connections")), "{:?}", err.1);
    assert_eq!(double.runtime_servers(BACKEND)["sd-a"].admin_state, "maint");
    assert!(double.config_servers(BACKEND).contains_key("sd-a"));
    assert_eq!(double.count_ok("commitTransaction"), commits_before, "nothing to persist");

    // Once the connections are gone, it goes from both.
    double.set_connections(BACKEND, "sd-a", 0);
    d.apply(BACKEND, &[Op::Remove { name: "sd-a".into() }]).await.unwrap();
    assert!(!double.runtime_servers(BACKEND).contains_key("sd-a"));
    assert!(!double.config_servers(BACKEND).contains_key("sd-a"));
    let now = d.servers(BACKEND).await.unwrap();
    let mut names: Vec<_> = now.iter().map(|s| s.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["sd-b", "static1"]);

    // One transaction per batch that changed something: add, weight+state, drain (no config
    // change: none), remove.
    assert_eq!(double.count_ok("commitTransaction"), 3);
    assert_eq!(double.count_ok("startTransaction"), 3);
    assert_eq!(double.open_transactions(), 0);
    assert_eq!(d.stats().transactions_committed, 3);
    // The other backend was never touched.
    assert!(double.config_servers("other").is_empty());
    assert_clean(&double);
}

#[tokio::test]
async fn v3_add_weight_state_remove_round_trip() {
    round_trip(ApiVersion::V3).await;
}

#[tokio::test]
async fn v2_add_weight_state_remove_round_trip() {
    round_trip(ApiVersion::V2).await;
}

async fn one_transaction_per_batch(api: ApiVersion) {
    let (double, mut d) = setup(api).await;
    d.servers(BACKEND).await.unwrap();
    let ops: Vec<Op> = (0..5).map(|i| Op::Add(server(&format!("sd-{i}"), 9000 + i, 1, AdminState::Ready))).collect();
    d.apply(BACKEND, &ops).await.unwrap();
    assert_eq!(double.runtime_servers(BACKEND).len(), 5);
    assert_eq!(double.config_servers(BACKEND).len(), 5);
    assert_eq!(double.count_ok("startTransaction"), 1);
    assert_eq!(double.count_ok("commitTransaction"), 1);
    let create = if api == ApiVersion::V3 { "createServerBackend" } else { "createServer" };
    assert_eq!(double.count_ok(create), 5);
    for r in double.requests().iter().filter(|r| r.operation == create) {
        assert!(r.uri.contains("transaction_id="), "config write outside the transaction: {}", r.uri);
        assert!(!r.uri.contains("version="), "{}", r.uri);
    }
    // A second batch mixing kinds is again one transaction.
    let ops = vec![
        Op::Remove { name: "sd-0".into() },
        Op::SetWeight { name: "sd-1".into(), weight: 7 },
        Op::SetState { name: "sd-2".into(), state: AdminState::Maint },
        Op::Add(server("sd-9", 9009, 3, AdminState::Drain)),
    ];
    d.apply(BACKEND, &ops).await.unwrap();
    assert_eq!(double.count_ok("startTransaction"), 2);
    assert_eq!(double.count_ok("commitTransaction"), 2);
    let cfg = double.config_servers(BACKEND);
    assert!(!cfg.contains_key("sd-0"));
    assert_eq!(cfg["sd-1"]["weight"], 7);
    assert_eq!(cfg["sd-2"]["maintenance"], "enabled");
    assert_eq!(double.runtime_servers(BACKEND)["sd-9"].admin_state, "drain");
    assert_clean(&double);
}

#[tokio::test]
async fn v3_one_transaction_per_apply_batch() {
    one_transaction_per_batch(ApiVersion::V3).await;
}

#[tokio::test]
async fn v2_one_transaction_per_apply_batch() {
    one_transaction_per_batch(ApiVersion::V2).await;
}

async fn conflict_retried(api: ApiVersion) {
    let (double, mut d) = setup(api).await;
    d.servers(BACKEND).await.unwrap();
    // Another writer changes the configuration after the driver read its version.
    double.bump_version();
    let versions_read = double.count_ok("getConfigurationVersion");
    d.apply(BACKEND, &[Op::Add(server("sd-a", 8081, 1, AdminState::Ready))]).await.unwrap();
    assert_eq!(double.count("startTransaction"), 2, "409 then a retry");
    assert_eq!(double.count_ok("startTransaction"), 1);
    assert!(double.count_ok("getConfigurationVersion") > versions_read, "the version was read again after the 409");
    assert_eq!(d.stats().version_conflicts, 1);
    assert!(double.config_servers(BACKEND).contains_key("sd-a"));

    // Injected 409s on configuration writes (transaction start and server writes).
    double.fail_next_config_writes(2);
    d.apply(BACKEND, &[Op::Add(server("sd-b", 8082, 1, AdminState::Ready))]).await.unwrap();
    assert_eq!(d.stats().version_conflicts, 3);
    assert!(double.config_servers(BACKEND).contains_key("sd-b"));
    assert_eq!(double.open_transactions(), 0, "abandoned transactions are deleted");

    // Bounded: endless conflicts end in an error, the runtime change stays and is persisted later.
    double.fail_next_config_writes(100);
    let err = d.apply(BACKEND, &[Op::Add(server("sd-c", 8083, 1, AdminState::Ready))]).await.unwrap_err();
    assert_eq!(err.0, 1, "the runtime part was done");
    assert!(err.1.is_retriable());
    assert!(double.runtime_servers(BACKEND).contains_key("sd-c"));
    assert!(!double.config_servers(BACKEND).contains_key("sd-c"));
    assert_eq!(d.unpersisted(BACKEND), 1);
    double.fail_next_config_writes(0);
    d.servers(BACKEND).await.unwrap();
    assert!(double.config_servers(BACKEND).contains_key("sd-c"), "persisted before the next read");
    assert_eq!(d.unpersisted(BACKEND), 0);
    assert_eq!(double.open_transactions(), 0);
    assert_clean(&double);
}

#[tokio::test]
async fn v3_version_conflict_409_is_retried_after_rereading_the_version() {
    conflict_retried(ApiVersion::V3).await;
}

#[tokio::test]
async fn v2_version_conflict_409_is_retried_after_rereading_the_version() {
    conflict_retried(ApiVersion::V2).await;
}

async fn outdated_commit_retried(api: ApiVersion) {
    let (double, mut d) = setup(api).await;
    d.servers(BACKEND).await.unwrap();
    double.fail_next_commits(1);
    d.apply(BACKEND, &[Op::Add(server("sd-a", 8081, 1, AdminState::Ready)), Op::Add(server("sd-b", 8082, 1, AdminState::Ready))]).await.unwrap();
    assert_eq!(double.count("commitTransaction"), 2);
    assert_eq!(double.count_ok("commitTransaction"), 1);
    assert_eq!(d.stats().outdated_commits, 1);
    assert_eq!(double.config_servers(BACKEND).len(), 2);
    assert_eq!(double.open_transactions(), 0);
    assert_clean(&double);
}

#[tokio::test]
async fn v3_outdated_commit_406_is_retried() {
    outdated_commit_retried(ApiVersion::V3).await;
}

#[tokio::test]
async fn v2_outdated_commit_406_is_retried() {
    outdated_commit_retried(ApiVersion::V2).await;
}

async fn reload_tracked(api: ApiVersion) {
    let (double, mut d) = setup(api).await;
    let g1 = d.generation().await.unwrap();
    assert_eq!(d.generation().await.unwrap(), g1, "stable while HAProxy runs");
    d.servers(BACKEND).await.unwrap();
    assert_eq!(d.last_reload_id(), None);
    d.apply(BACKEND, &[Op::Add(server("sd-a", 8081, 4, AdminState::Ready)), Op::Add(server("sd-b", 8082, 2, AdminState::Maint))]).await.unwrap();
    let reloads = double.reloads();
    assert_eq!(reloads.len(), 1);
    let id = d.last_reload_id().expect("Reload-ID of the commit").to_string();
    assert_eq!(id, reloads[0].id);
    assert_eq!(d.reload_status(&id).await.unwrap(), ReloadStatus::InProgress);
    let before = d.servers(BACKEND).await.unwrap();

    // The reload happens: a new worker, servers from the configuration. Same set as before.
    double.complete_reloads();
    assert_eq!(d.reload_status(&id).await.unwrap(), ReloadStatus::Succeeded);
    let g2 = d.generation().await.unwrap();
    assert_ne!(g1, g2, "a reload is a new generation");
    let after = d.servers(BACKEND).await.unwrap();
    assert_eq!(before, after, "what was persisted is what runs after the reload");

    d.apply(BACKEND, &[Op::SetWeight { name: "sd-a".into(), weight: 9 }]).await.unwrap();
    assert_eq!(double.reloads().len(), 2);
    assert_eq!(d.last_reload_id(), Some(double.reloads()[1].id.as_str()));
    assert_eq!(d.stats().reloads_requested, 2);

    double.restart_haproxy();
    assert_ne!(d.generation().await.unwrap(), g2, "a restart is a new generation");
    assert_clean(&double);
}

#[tokio::test]
async fn v3_reload_id_is_tracked_and_generation_follows_reloads() {
    reload_tracked(ApiVersion::V3).await;
}

#[tokio::test]
async fn v2_reload_id_is_tracked_and_generation_follows_reloads() {
    reload_tracked(ApiVersion::V2).await;
}

#[tokio::test]
async fn unreachable_api_is_a_retriable_error() {
    let (double, mut d) = setup(ApiVersion::V3).await;
    drop(double);
    let e = d.servers(BACKEND).await.unwrap_err();
    assert!(matches!(e, DriverError::Unreachable(_)), "{e:?}");
    assert!(e.is_retriable());
}

/// The validator is not a rubber stamp: requests that break the spec get 400 and are recorded.
async fn validator_catches(api: ApiVersion) {
    let double = DataplaneDouble::start(api, &[BACKEND]).await;
    double.declare_server(BACKEND, "s1", "127.0.0.1", 8080);
    let http = reqwest::Client::new();
    let base = format!("{}{}", double.url(), api.base_path());
    let runtime_one = match api {
        ApiVersion::V3 => format!("{base}/services/haproxy/runtime/backends/{BACKEND}/servers/s1"),
        ApiVersion::V2 => format!("{base}/services/haproxy/runtime/servers/s1?backend={BACKEND}"),
    };
    let config_all = match api {
        ApiVersion::V3 => {
            format!("{base}/services/haproxy/configuration/backends/{BACKEND}/servers")
        }
        ApiVersion::V2 => {
            format!("{base}/services/haproxy/configuration/servers?backend={BACKEND}")
        }
    };
    let sep = if config_all.contains('?') { '&' } else { '?' };

    // A valid request first: no violation.
    let r = http.put(&runtime_one).basic_auth(USER, Some(PASSWORD)).json(&serde_json::json!({"admin_state": "drain"})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(double.violations().is_empty(), "{:#?}", double.violations());

    let bad: Vec<(reqwest::RequestBuilder, &str)> = vec![
        (http.put(&runtime_one).json(&serde_json::json!({"admin_state": "sleeping"})), "is not one of"),
        (http.put(&runtime_one).json(&serde_json::json!({"admin-state": "drain"})), "no such property"),
        (http.get(format!("{base}/services/haproxy/configuration/version?verbose=1")), "unknown query parameter `verbose`"),
        (http.post(format!("{base}/services/haproxy/transactions")), "required query parameter `version` is missing"),
        (http.post(format!("{base}/services/haproxy/transactions?version=latest")), "is not an integer"),
        (http.post(format!("{config_all}{sep}version=1")).json(&serde_json::json!({"name": "x", "port": 80})), "required property `address`"),
        (
            http.post(format!("{config_all}{sep}version=1")).json(&serde_json::json!({"name": "x", "adress": "10.0.0.1", "address": "10.0.0.1"})),
            "body.adress: no such property",
        ),
        (http.post(format!("{config_all}{sep}version=1")).json(&serde_json::json!({"name": "x", "address": "10.0.0.1", "port": 70000})), "above the maximum"),
        (http.post(format!("{config_all}{sep}version=1")).json(&serde_json::json!({"name": "x", "address": "10.0.0.1", "maintenance": "on"})), "is not one of"),
        (http.post(format!("{config_all}{sep}version=1")).json(&serde_json::json!({"name": "x", "address": "10.0.0.1", "check": true})), "expected a string"),
        (
            http.post(format!("{config_all}{sep}version=1&force_reload=yes")).json(&serde_json::json!({"name": "x", "address": "10.0.0.1"})),
            "is not true or false",
        ),
        (http.post(format!("{config_all}{sep}version=1")).header("content-type", "application/json").body("{not json"), "not JSON"),
        (http.post(format!("{config_all}{sep}version=1")), "needs a body"),
        (http.get(format!("{base}/services/haproxy/runtime/info")).json(&serde_json::json!({})), "takes no body"),
        (http.patch(&runtime_one).json(&serde_json::json!({})), "is not an operation"),
        (http.get(format!("{base}/services/haproxy/runtime/nothing/here")), "no path"),
        (http.get(format!("{base}/services/haproxy/reloads/yesterday")), "does not match"),
    ];
    let n = bad.len();
    for (i, (req, expect)) in bad.into_iter().enumerate() {
        let r = req.basic_auth(USER, Some(PASSWORD)).send().await.unwrap();
        assert_eq!(r.status(), 400, "bad request #{i} ({expect}) was not rejected");
        let v = double.violations();
        assert_eq!(v.len(), i + 1, "bad request #{i} was not recorded");
        assert!(v[i].errors.iter().any(|e| e.contains(expect)), "bad request #{i}: expected `{expect}` in {:?}", v[i].errors);
    }
    // No auth: 401, and recorded.
    let r = http.get(format!("{base}/services/haproxy/configuration/version")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(double.violations().len(), n + 1);
    // A path outside the base path.
    let other = if api == ApiVersion::V3 { "v2" } else { "v3" };
    let r = http.get(format!("{}/{other}/services/haproxy/configuration/version", double.url())).basic_auth(USER, Some(PASSWORD)).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(double.violations().len(), n + 2);

    // Valid by the spec but refused by the API's rules (not a spec violation): version and
    // transaction_id together, and a stale version.
    let before = double.violations().len();
    let r = http
        .post(format!("{config_all}{sep}version=1&transaction_id=abc"))
        .basic_auth(USER, Some(PASSWORD))
        .json(&serde_json::json!({"name": "x", "address": "10.0.0.1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .post(format!("{config_all}{sep}version=99"))
        .basic_auth(USER, Some(PASSWORD))
        .json(&serde_json::json!({"name": "x", "address": "10.0.0.1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(r.headers().get("Configuration-Version").unwrap(), "1");
    let r = http
        .post(format!("{config_all}{sep}version=1"))
        .basic_auth(USER, Some(PASSWORD))
        .json(&serde_json::json!({"name": "x", "address": "10.0.0.1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(r.headers().get("Reload-ID").is_some());
    assert_eq!(double.violations().len(), before);
    assert!(double.response_violations().is_empty(), "{:#?}", double.response_violations());
}

#[tokio::test]
async fn v3_validator_rejects_and_records_requests_that_break_the_spec() {
    validator_catches(ApiVersion::V3).await;
}

#[tokio::test]
async fn v2_validator_rejects_and_records_requests_that_break_the_spec() {
    validator_catches(ApiVersion::V2).await;
}

/// Over HTTPS the driver trusts only `--dataplane-ca-file`: it works against a Data Plane API
/// serving a certificate of that CA (basic auth intact), and refuses one from another CA
/// before sending the credentials anywhere.
#[tokio::test]
async fn https_trusts_the_ca_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let ours = e2e::secure::Secured::init(&dir.path().join("ours"), &["127.0.0.1"]);
    let theirs = e2e::secure::Secured::init(&dir.path().join("theirs"), &["127.0.0.1"]);
    let tls = dir.path().join("ours/tls");
    let double = DataplaneDouble::start_tls(ApiVersion::V3, &[BACKEND], &tls.join("node-127.0.0.1.pem"), &tls.join("node-127.0.0.1-key.pem")).await;
    assert!(double.url().starts_with("https://"), "{}", double.url());
    let auth =
        |ca: &std::path::Path| syncer::config::DataplaneAuth { user: Some(USER.into()), password: Some(PASSWORD.into()), ca_file: Some(ca.to_path_buf()) };

    let mut d = DataplaneApi::new(&double.url(), DataplaneVersion::V3, auth(&ours.ca), OPTIONS.into()).unwrap();
    d.apply(BACKEND, &[Op::Add(server("sd-a", 8081, 10, AdminState::Ready))]).await.unwrap();
    assert!(find(&d.servers(BACKEND).await.unwrap(), "sd-a").is_some());
    assert_clean(&double);

    let before = double.requests().len();
    let mut stranger = DataplaneApi::new(&double.url(), DataplaneVersion::V3, auth(&theirs.ca), OPTIONS.into()).unwrap();
    let err = stranger.servers(BACKEND).await.unwrap_err().to_string();
    // The root cause, not reqwest's "error sending request" (both CAs bear the same name, so
    // rustls finds the issuer and then a signature it cannot verify).
    assert!(err.contains("invalid peer certificate") && !err.contains("error sending request"), "{err}");
    assert_eq!(double.requests().len(), before, "a request reached the API through a certificate the driver was not told to trust");
}
