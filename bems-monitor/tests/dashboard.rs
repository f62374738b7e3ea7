//! The local cell end to end: the binary starts its own PostgreSQL,
//! provisions a cell on the emulators, runs traffic through the six
//! functions, serves the dashboard over its store, stops after
//! `--duration`, prints its summary and deletes the cell and its server.
//! While it runs, the dashboard's data has every view's numbers, and
//! headless Chromium (Debian's `chromium`) loads the page, draws the charts
//! with data, and leaves a screenshot of each view in
//! `target/test-artifacts/`. Then PostgreSQL is stopped under it: the store
//! panels name the store as failing while the queue panels still show
//! (in the API and in Chromium), and after the restart they recover; the
//! status changes dead-lettered meanwhile as "store unavailable" are
//! redriven, as an operator would, and the run ends with nothing missing.
//!
//! Needs the emulators (`BEMS_LOCALSTACK_URL`, `BEMS_MOTO_URL`, set by
//! `scripts/test`) and, for the browser part, `chromium` on the `PATH`
//! (`.ci/run` installs it and sets `BEMS_REQUIRE_CHROMIUM=1`, which makes
//! a missing browser a failure rather than a skipped check).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{LocalCell, smoke};
use serde_json::Value;

fn chromium() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .flat_map(|d| ["chromium", "chromium-browser"].map(|n| d.join(n)))
            .find(|p| p.is_file())
    })
}

fn get(url: &str) -> Value {
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10))).build().into();
    let mut response = agent.get(url).call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    serde_json::from_str(&response.body_mut().read_to_string().expect("body")).expect("JSON")
}

fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifact directory");
    dir
}

/// Loads `url` in headless Chromium: the DOM after the page's scripts ran,
/// and a screenshot at `png`.
fn browse(chromium: &PathBuf, url: &str, png: &std::path::Path) -> String {
    let common = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1400,1100"];
    let shot = Command::new(chromium)
        .args(common)
        .arg("--virtual-time-budget=6000")
        .arg(format!("--screenshot={}", png.display()))
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(png.is_file(), "no screenshot: {}", String::from_utf8_lossy(&shot.stderr));
    let dom = Command::new(chromium)
        .args(common)
        .arg("--virtual-time-budget=6000")
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("run chromium");
    String::from_utf8_lossy(&dom.stdout).into_owned()
}

/// The number in `data-points="N"` of the chart with id `id`.
fn points(dom: &str, id: &str) -> usize {
    let at = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no {id} in the page"));
    let tag_end = dom[at..].find('>').map_or(dom.len(), |e| at + e);
    let tag = &dom[at..tag_end];
    tag.split("data-points=\"").nth(1).and_then(|rest| rest.split('"').next()).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// Polls `/api/state` until `ready` holds (or `timeout` passes: the last
/// state, for the assertions to explain).
fn wait_for_state(base: &str, ready: impl Fn(&Value) -> bool, timeout: Duration) -> Value {
    let started = std::time::Instant::now();
    loop {
        let state = get(&format!("{base}/api/state"));
        if ready(&state) || started.elapsed() > timeout {
            return state;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Moves what the status queue's DLQ holds back to the status queue, as
/// `bems redrive --queue status` does; how many.
fn redrive_status(localstack: &str, cell: &str) -> usize {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(localstack)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new("test", "test", None, None, "redrive"))
            .load()
            .await;
        let sqs = aws_sdk_sqs::Client::new(&config);
        let (dlq, source) = bems_ops::redrive::queues_named(&common::spec(cell), "status").expect("queues");
        let dlq = bems_ops::redrive::queue_url(&sqs, &dlq).await.expect("dlq");
        let source = bems_ops::redrive::queue_url(&sqs, &source).await.expect("status queue");
        bems_ops::redrive::redrive_fifo(&sqs, &dlq, &source).await.expect("redrive").message_ids.len()
    })
}

#[test]
fn the_local_cell_runs_traffic_serves_a_live_dashboard_and_cleans_up() {
    let Some((localstack, moto)) = common::emulators() else { return };
    let browser = chromium();
    if browser.is_none() {
        assert!(
            std::env::var_os("BEMS_REQUIRE_CHROMIUM").is_none(),
            "BEMS_REQUIRE_CHROMIUM=1 but chromium is not on PATH"
        );
        eprintln!("chromium not found: the browser checks are skipped (apt-get install chromium)");
    }
    let cell = common::fresh_cell("lc");
    let postgres = common::PrivatePostgres::new();
    let mut child = LocalCell::start_with(
        &localstack,
        &moto,
        &["--cell", &cell, "--partitions", "2", "--duration", "85", "--port", "0", "--scale", "0.02"]
            .into_iter()
            .chain(["--failing", "0.02", "--ramp-secs", "30"])
            .collect::<Vec<_>>(),
        Some(&postgres),
    );
    let (api, key) = child.ingress();
    let base = child.after("dashboard on ", Duration::from_secs(120));
    let base = base.split_whitespace().next().map(|u| u.trim_end_matches('/').to_owned()).expect("an address");

    // `bems smoke` against the running cell: one marked invoice through
    // its API, followed through every stage into the store.
    let psql = child.after("open it: ", Duration::from_secs(10));
    assert!(psql.contains(&format!("-p {} ", postgres.port)), "the psql command names the cell's server: {psql}");
    let report = smoke(&localstack, &postgres.url(), &cell, &api, &key);
    assert!(report.passed(), "the smoke invoice stopped: {report:#?}");
    assert!(report.checkpoints.iter().all(|c| c.seen_after_ms.is_some()));

    // Let traffic flow, then read what the dashboard reads.
    std::thread::sleep(Duration::from_secs(35));
    let state = get(&format!("{base}/api/state"));
    let number = |v: &Value| v.as_u64().unwrap_or(0);
    assert!(number(&state["sent"]) > 20, "invoices were sent: {}", state["sent"]);
    assert!(number(&state["visible"]) >= number(&state["sent"]), "submissions at least are visible: {state}");
    assert!(state["visibilityMs"]["p99"].is_u64(), "visibility latency is measured");
    for list in ["series", "currencies", "dueWeeks", "terms", "highValue"] {
        assert!(state[list].as_array().is_some_and(|l| !l.is_empty()), "{list} is empty: {state}");
    }
    assert_eq!(state["queues"].as_object().map(serde_json::Map::len), Some(10), "stage and status queues and DLQs");
    assert!(number(&state["failures"]["Processed"]) > 0, "the functions' metrics are counted: {}", state["failures"]);
    assert_eq!(
        state["stageErrors"].as_array().map(Vec::len),
        Some(4),
        "an error rate per stage: {}",
        state["stageErrors"]
    );
    assert!(state["anomalyMethod"].as_str().is_some_and(|m| m.contains("3 standard deviations")));

    if let Some(browser) = &browser {
        for view in ["executive", "operations", "finance"] {
            let png = artifacts().join(format!("bems-monitor-{view}.png"));
            let _ = std::fs::remove_file(&png);
            let dom = browse(browser, &format!("{base}/#{view}"), &png);
            assert!(dom.contains(&format!("cell <span id=\"cell\">{cell}</span>")), "the page loaded its data");
            let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
            assert!(size > 20_000, "{view}: a screenshot of a drawn page, not a blank one ({size} bytes)");
            match view {
                "executive" => {
                    assert!(points(&dom, "chart-stages") > 0, "the stage chart has data");
                    assert!(points(&dom, "chart-currency") > 0, "the currency chart has data");
                }
                "finance" => {
                    assert!(points(&dom, "chart-weeks") > 0, "the due-week chart has data");
                    assert!(points(&dom, "chart-terms") > 0, "the payment-terms chart has data");
                }
                _ => assert!(dom.contains("Method: per stage"), "the anomaly method is stated"),
            }
        }
    }

    // PostgreSQL stopped under the running cell.
    postgres.script("down");
    let state = wait_for_state(&base, |s| s["store"]["ok"] == false, Duration::from_secs(15));
    assert!(
        state["store"]["error"].as_str().is_some_and(|e| e.contains("postgres: connect")),
        "the store is named as failing: {}",
        state["store"]
    );
    assert_eq!(state["queues"].as_object().map(serde_json::Map::len), Some(10), "the queue panels still show");
    assert!(number(&state["visible"]) > 0, "the store panels keep their last values");
    if let Some(browser) = &browser {
        let png = artifacts().join("bems-monitor-store-down.png");
        let dom = browse(browser, &format!("{base}/#operations"), &png);
        assert!(dom.contains("data-ok=\"false\"") && dom.contains("FAILING"), "the page names the store as failing");
        assert!(dom.matches("<tr>").count() > 10, "the queue table still has rows");
    }
    postgres.script("up");
    let state = wait_for_state(&base, |s| s["store"]["ok"] == true, Duration::from_secs(20));
    assert!(state["store"]["error"].is_null(), "{}", state["store"]);
    if let Some(browser) = &browser {
        let png = artifacts().join("bems-monitor-store-back.png");
        let dom = browse(browser, &format!("{base}/#executive"), &png);
        assert!(dom.contains("data-ok=\"true\""), "the page shows the store answering again");
    }
    // What was dead-lettered while it was down comes back (`bems redrive
    // --queue status`), so the run's count is whole again.
    let redriven = redrive_status(&localstack, &cell);
    eprintln!("redriven after the outage: {redriven}");

    let (success, rest) = child.finish();
    assert!(success, "bems-monitor failed: {rest:?}");
    let summary = rest.iter().find(|l| l.starts_with("summary: ")).unwrap_or_else(|| panic!("no summary: {rest:?}"));
    assert!(summary.contains("status changes visible") && summary.contains("p99"), "{summary}");
    // After the drain, every event the bus accepted (submissions and the
    // stages' next events) is stored: the run lost nothing.
    let load = rest.iter().find(|l| l.starts_with("load: ")).unwrap_or_else(|| panic!("no load line: {rest:?}"));
    assert!(load.contains("none missing"), "{load}");
    assert!(rest.iter().any(|l| l == &format!("bems-monitor: cell {cell} deleted")), "the cell was deleted: {rest:?}");
}
