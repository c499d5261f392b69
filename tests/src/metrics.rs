//! Prometheus / OpenMetrics text (every part's `/metrics`) as the benchmarks read it.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;

/// Every sample of a scrape: `name{labels}` (as written) to its value.
pub type Samples = BTreeMap<String, f64>;

/// The samples in `text`; comments and lines without a number at the end are skipped.
pub fn parse(text: &str) -> Samples {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse::<f64>().ok()?)))
        .collect()
}

/// The sum of `name`'s samples over all their label sets; None if it has none.
pub fn sum(samples: &Samples, name: &str) -> Option<f64> {
    let mut found = None;
    for (k, v) in samples {
        if k.strip_prefix(name).is_some_and(|rest| rest.is_empty() || rest.starts_with('{')) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// GETs `url` (a `/metrics` page) through `http` and parses it.
pub async fn scrape(http: &reqwest::Client, url: &str) -> anyhow::Result<Samples> {
    let resp = http.get(url).timeout(Duration::from_secs(5)).send().await.with_context(|| format!("GET {url}"))?;
    let text = resp.error_for_status().with_context(|| format!("GET {url}"))?.text().await?;
    Ok(parse(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_summed_over_labels() {
        let s = parse("# TYPE a counter\na_total{kind=\"x\"} 2\na_total{kind=\"y\"} 3.5\nab_total 7\nb 1\n# EOF\n");
        assert_eq!(sum(&s, "a_total"), Some(5.5));
        assert_eq!(sum(&s, "ab_total"), Some(7.0));
        assert_eq!(sum(&s, "a"), None);
        assert_eq!(s.get("b"), Some(&1.0));
    }
}
