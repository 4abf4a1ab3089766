//! The chart's Grafana dashboard against Grafana's dashboard schema (`dashboard-schema`, built by
//! e2e/build-binaries.sh from the Apache-licensed grafana-foundation-sdk), and against what the
//! operator really exports: every panel's query, evaluated by a real Prometheus that scraped the
//! operator through a lease, returns data.

use serde_json::{Value, json};

use crate::support::{Prometheus, bin_dir, now_unix, repo};

fn dashboard() -> Value {
    let path = repo().join("charts/gpubridge/files/dashboards/gpubridge.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// What `dashboard-schema` says of `dashboard`: Ok when it conforms, else its complaint.
fn schema_check(dashboard: &Value) -> Result<String, String> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(dashboard).unwrap()).unwrap();
    let out = std::process::Command::new(bin_dir().join("dashboard-schema"))
        .arg(file.path())
        .output()
        .expect("dashboard-schema runs");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    match out.status.success() {
        true => Ok(said),
        false => Err(said),
    }
}

#[test]
fn the_dashboard_conforms_to_grafanas_dashboard_schema() {
    let conforming = dashboard();
    let said = schema_check(&conforming).unwrap_or_else(|e| panic!("{e}"));
    assert!(said.contains("conforms"), "{said}");
    // The check can fail: an unknown field, a field of the wrong type, a required field
    // missing, an unknown panel option, each refused naming where.
    let mut unknown = conforming.clone();
    unknown["refreshEvery"] = json!("1m");
    let mut wrong_type = conforming.clone();
    wrong_type["panels"][0]["gridPos"]["w"] = json!("wide");
    let mut missing = conforming.clone();
    missing["panels"][1]["options"]
        .as_object_mut()
        .unwrap()
        .remove("justifyMode");
    let mut option = conforming.clone();
    option["panels"][1]["options"]["colourMode"] = json!("value");
    for (broken, names) in [
        (unknown, "refreshEvery"),
        (wrong_type, "panels[0].gridPos.w"),
        (missing, "panels[1].options.justifyMode"),
        (option, "colourMode"),
    ] {
        match schema_check(&broken) {
            Ok(said) => panic!("accepted a dashboard that breaks the schema at {names}: {said}"),
            Err(said) => assert!(said.contains(names), "{names}: {said}"),
        }
    }
}

/// Every query of the dashboard, with the panel it belongs to.
pub fn panel_queries() -> Vec<(String, String)> {
    let dashboard = dashboard();
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
