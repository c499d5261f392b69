//! Metrics served the same way by every binary: the body `prometheus_client` encodes is
//! OpenMetrics text, so that is the content type; and `<binary>_build_info`.

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The content type of the body `prometheus_client::encoding::text::encode` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The git revision the binary was built from (`unknown` outside a checkout).
pub const REVISION: &str = env!("SD_GIT_REVISION");

/// `--version`: the package version and the git revision.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("SD_GIT_REVISION"), ")");

/// Registers `build_info{version, revision} 1` in `r` (whose prefix names the binary).
pub fn register_build_info(r: &mut Registry) {
    let info: Family<Vec<(String, String)>, Gauge> = Family::default();
    info.get_or_create(&vec![("version".into(), env!("CARGO_PKG_VERSION").into()), ("revision".into(), REVISION.into())]).set(1);
    r.register("build_info", "The version and git revision of this binary", info);
}
