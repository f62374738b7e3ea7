//! The template's alarms watch the metrics the functions really emit: the
//! namespace, the `Function` dimension values and the metric names in
//! `infra/cells/prod-eu-1/cell.json` are the ones `bems_lambda` uses (both
//! from `bems_core::contract`). (No emulator needed.)

use bems_core::contract::{CELL_DIMENSION, FUNCTION_DIMENSION, Function, METRICS_NAMESPACE};
use serde_json::Value;

#[test]
fn alarms_name_the_metrics_the_functions_emit() {
    let text = include_str!("../../infra/cells/prod-eu-1/cell.json");
    let template: Value = serde_json::from_str(text).expect("the committed template is JSON");
    let mut custom = Vec::new();
    for (id, r) in template["Resources"].as_object().expect("resources") {
        for m in r["Properties"]["Metrics"].as_array().into_iter().flatten() {
            let metric = &m["MetricStat"]["Metric"];
            // AWS's own metrics (SQS, API Gateway, Lambda) are not ours to check here.
            if metric.is_null() || metric["Namespace"].as_str().is_some_and(|n| n.starts_with("AWS/")) {
                continue;
            }
            assert_eq!(metric["Namespace"], METRICS_NAMESPACE, "{id}");
            let function = metric["Dimensions"]
                .as_array()
                .and_then(|d| d.iter().find(|d| d["Name"] == FUNCTION_DIMENSION))
                .and_then(|d| d["Value"].as_str())
                .unwrap_or_else(|| panic!("{id}: no Function dimension"));
            custom.push((function.to_owned(), metric["MetricName"].as_str().unwrap_or_default().to_owned()));
        }
    }
    // The writer's visibility latency (the SLA alarm) and each stage's
    // and the forwarder's processed and failed counts (the error-rate alarms).
    let writer = Function::StatusWriter.metrics_name();
    assert!(custom.contains(&(writer, "VisibilityLatency".to_owned())), "{custom:?}");
    for function in Function::ALL.iter().filter(|f| **f != Function::StatusWriter).map(|f| f.metrics_name()) {
        for name in ["Processed", "Failed", "DeadLettered"] {
            assert!(custom.contains(&(function.clone(), name.to_owned())), "{function} {name}: {custom:?}");
        }
    }
    // And nothing else: every alarm metric is one of those.
    let known: Vec<String> = Function::ALL.iter().map(|f| f.metrics_name()).collect();
    assert!(custom.iter().all(|(f, _)| known.contains(f)), "{custom:?}");

    // The dashboard's custom metrics too: ["BEMS", name, "Cell", c, "Function", f, ...].
    let body = template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
        .as_str()
        .expect("the dashboard body is a Fn::Sub string");
    let body: Value = serde_json::from_str(body).expect("the dashboard body is JSON");
    let mut seen = 0;
    for widget in body["widgets"].as_array().expect("widgets") {
        for metric in widget["properties"]["metrics"].as_array().into_iter().flatten() {
            if metric[0] == METRICS_NAMESPACE {
                assert_eq!(
                    (&metric[2], &metric[4]),
                    (&Value::from(CELL_DIMENSION), &Value::from(FUNCTION_DIMENSION)),
                    "{metric}"
                );
                let function = metric[5].as_str().unwrap_or_default().to_owned();
                assert!(known.contains(&function), "dashboard metric for an unknown function: {metric}");
                seen += 1;
            }
        }
    }
    assert!(seen > 20, "the dashboard shows the functions' metrics ({seen})");
}
