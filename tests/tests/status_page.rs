//! The status page (`GET /ui`) in real headless Chromium (Debian `chromium`, which
//! `scripts/test` installs), against a secured 3-node cluster: the page asks for a token, then
//! shows the cluster, and an instance registered while it is open appears without a reload,
//! with its lease bar; its removal shows with the cause. A screenshot is left in
//! `target/ui/status-page.png`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use e2e::RegistryCluster;
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};

fn chromium() -> PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("chromium is not installed: run scripts/test (ensure_chromium) or `apt-get install chromium`")
}

/// Runs blocking DevTools calls off the async threads.
async fn on_tab<T: Send + 'static>(tab: &Arc<Tab>, f: impl FnOnce(&Tab) -> anyhow::Result<T> + Send + 'static) -> T {
    let tab = tab.clone();
    tokio::task::spawn_blocking(move || f(&tab)).await.unwrap().unwrap()
}

fn text_of(tab: &Tab, selector: &str) -> anyhow::Result<String> {
    tab.wait_for_element_with_custom_timeout(selector, Duration::from_secs(15))?.get_inner_text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_cluster_and_follows_changes_live() {
    let cluster = RegistryCluster::start(3).await;
    let admin = cluster.client();
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let read_token = client::generate_token();
    e2e::wait_for(Duration::from_secs(20), "a read token", || async {
        admin.create_token(&read_token, &["read".to_string()], "status page").await.ok().map(|_| ())
    })
    .await;

    // The cluster's certificates come from a test CA the browser does not know.
    let options = LaunchOptions::default_builder()
        .path(Some(chromium()))
        .headless(true)
        .sandbox(false)
        .window_size(Some((1400, 1000)))
        .args(vec![std::ffi::OsStr::new("--ignore-certificate-errors")])
        .idle_browser_timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let browser = tokio::task::spawn_blocking(move || Browser::new(options)).await.unwrap().expect("starting chromium");
    let tab = browser.new_tab().unwrap();
    let url = format!("{}/ui", cluster.urls()[leader]);

    // Without a token the page reads nothing and asks for one.
    let why = on_tab(&tab, move |t| {
        t.navigate_to(&url)?.wait_until_navigated()?;
        text_of(t, "#token-form:not([hidden]) #token-why")
    })
    .await;
    assert!(why.contains("needs a token"), "{why}");
    let rows = on_tab(&tab, |t| Ok(t.find_elements("#members tbody tr").map(|r| r.len()).unwrap_or(0))).await;
    assert_eq!(rows, 0, "members shown without a token");

    // With the read token: three members, this node the leader.
    let token = read_token.clone();
    let summary = on_tab(&tab, move |t| {
        t.wait_for_element("#token")?.click()?;
        t.type_str(&token)?.press_key("Enter")?;
        t.wait_for_element_with_custom_timeout("#members tbody tr:nth-child(3)", Duration::from_secs(15))?;
        text_of(t, "#cluster-summary")
    })
    .await;
    assert!(summary.contains(&format!("leader: node {}", leader + 1)), "{summary}");

    // Registered while the page is open: it appears without a reload, with its lease.
    let lease = admin.grant(Duration::from_secs(30)).await.unwrap().lease_id;
    let spec = proto::InstanceSpec {
        address: "10.1.2.3".into(),
        port: 8080,
        lease_id: Some(lease),
        weight: 100,
        state: Default::default(),
        meta: [("zone".to_string(), "b".to_string())].into(),
    };
    admin.put_instance("web-servers", "web-1", &spec).await.unwrap();
    let row = on_tab(&tab, |t| text_of(t, "tr[data-instance='web-servers/web-1']")).await;
    assert!(row.contains("10.1.2.3:8080") && row.contains("up") && row.contains("zone=b"), "{row}");
    let bar = on_tab(&tab, |t| text_of(t, "tr[data-instance='web-servers/web-1'] .left")).await;
    let left: f64 = bar.trim_end_matches(" s").parse().unwrap_or_else(|_| panic!("no TTL left in {bar:?}"));
    assert!(left > 0.0 && left <= 30.0, "{bar}");

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ui");
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("status-page.png");
    let png = on_tab(&tab, |t| t.capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)).await;
    std::fs::write(&shot, &png).unwrap();
    eprintln!("screenshot: {}", shot.canonicalize().unwrap().display());

    // Revoked: gone from the services, listed among the removals with its cause.
    admin.revoke(lease).await.unwrap();
    let removal = on_tab(&tab, |t| {
        t.wait_for_element_with_custom_timeout("#services .muted", Duration::from_secs(15))?;
        text_of(t, "#removals tbody tr")
    })
    .await;
    assert!(removal.contains("web-1") && removal.contains(&format!("revoked (lease {lease})")), "{removal}");
}
