//! The chart's Grafana dashboard against what the operator really exports: every panel's query,
//! evaluated by a real Prometheus that scraped the operator through a lease, returns data.

use serde_json::Value;

use crate::support::{Prometheus, now_unix, repo};

/// Every query of the dashboard, with the panel it belongs to.
pub fn panel_queries() -> Vec<(String, String)> {
    let path = repo().join("charts/gpubridge/files/dashboards/gpubridge.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push((
                panel["title"].as_str().unwrap().to_string(),
                target["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    queries
}

/// Evaluates each panel's query as Grafana would over [since, now], with Grafana's interval
/// variables set for a 1 s scrape, and fails naming every panel that shows no data.
pub async fn every_panel_shows_data(prometheus: &Prometheus, since: i64) {
    let now = now_unix();
    let queries = panel_queries();
    assert!(queries.len() >= 15, "the dashboard has its panels");
    let mut empty = Vec::new();
    for (title, expr) in &queries {
        let expr = expr
            .replace("$__rate_interval", "15s")
            .replace("$__range", &format!("{}s", now - since));
        match prometheus.query_range(&expr, since, now).await {
            Ok(series)
                if series
                    .iter()
                    .any(|s| s["values"].as_array().is_some_and(|v| !v.is_empty())) => {}
            Ok(_) => empty.push(format!("{title}: no data for {expr}")),
            Err(e) => empty.push(format!("{title}: {e}")),
        }
    }
    assert!(
        empty.is_empty(),
        "panels without data:\n{}",
        empty.join("\n")
    );
    println!(
        "dashboard: all {} panel queries returned data",
        queries.len()
    );
}
