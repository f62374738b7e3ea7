//! The operations dashboard.

use bems_core::Stage;
use bems_core::contract::{CELL_DIMENSION, CLASS_DIMENSION, FUNCTION_DIMENSION, Function, METRICS_NAMESPACE};
use bems_core::routing::CellSpec;
use serde_json::{Value, json};

use super::*;

/// The operations dashboard `bems-C`: the SLA view (visibility latency
/// against the SLA, records stored, the critical alarm), then per stage
/// (records handled, failures by class, dead-lettered, stage latency),
/// the queues (depth and oldest message, DLQ depth) and the API (requests,
/// 4xx, 5xx, latency). The executive and finance views read Timestream and
/// live in the local dashboard (`examples/`), not in CloudWatch.
pub(super) fn dashboard(spec: &CellSpec) -> Value {
    use crate::api::STAGE_NAME;
    let processor = |stage| Function::Processor(stage).metrics_name();
    let writer = || Function::StatusWriter.metrics_name();
    let cell = spec.cell_id().as_str();
    let region = "${AWS::Region}";
    let bems = |name: &str, function: &str, stat: &str, label: &str| json!([METRICS_NAMESPACE, name, CELL_DIMENSION, cell, FUNCTION_DIMENSION, function, { "stat": stat, "label": label }]);
    let widget = |x: u32, y: u32, w: u32, title: &str, metrics: Vec<Value>, extra: Value| {
        let mut properties = json!({
            "title": title, "region": region, "view": "timeSeries", "period": 60, "metrics": metrics,
        });
        if let (Some(p), Value::Object(extra)) = (properties.as_object_mut(), extra) {
            p.extend(extra);
        }
        json!({ "type": "metric", "x": x, "y": y, "width": w, "height": 6, "properties": properties })
    };
    let mut widgets = vec![
        json!({
            "type": "text", "x": 0, "y": 0, "width": 24, "height": 1,
            "properties": { "markdown": format!("## BEMS cell {cell}: every event visible within ${{SlaSeconds}} s") },
        }),
        widget(
            0,
            1,
            12,
            "Event to stored (ms): p50, p99 against the SLA",
            vec![
                bems("VisibilityLatency", &writer(), "p50", "p50"),
                bems("VisibilityLatency", &writer(), "p99", "p99"),
            ],
            json!({ "annotations": { "horizontal": [{ "label": "SLA", "value": "${SlaSeconds}000" }] } }),
        ),
        widget(
            12,
            1,
            6,
            "Status changes stored per minute",
            vec![bems("RecordsWritten", &writer(), "Sum", "stored")],
            json!({}),
        ),
        json!({
            "type": "alarm", "x": 18, "y": 1, "width": 6, "height": 6,
            "properties": {
                "title": "Critical",
                "alarms": [format!("arn:${{AWS::Partition}}:cloudwatch:{region}:${{AWS::AccountId}}:alarm:{}", alarms::critical_alarm_name(spec))],
            },
        }),
    ];
    for (i, stage) in Stage::ALL.into_iter().enumerate() {
        let function = processor(stage);
        let x = u32::try_from(i).unwrap_or(0) * 6;
        let mut metrics = vec![bems("Processed", &function, "Sum", "processed")];
        for class in ["transient", "business", "poison", "held_back"] {
            metrics.push(json!([METRICS_NAMESPACE, "Failed", CELL_DIMENSION, cell, FUNCTION_DIMENSION, function, CLASS_DIMENSION, class, { "stat": "Sum", "label": format!("failed: {class}") }]));
        }
        for class in ["business", "poison"] {
            metrics.push(json!([METRICS_NAMESPACE, "DeadLettered", CELL_DIMENSION, cell, FUNCTION_DIMENSION, function, CLASS_DIMENSION, class, { "stat": "Sum", "label": format!("dead-lettered: {class}") }]));
        }
        widgets.push(widget(x, 7, 6, &format!("{stage}: records"), metrics, json!({})));
        widgets.push(widget(
            x,
            13,
            6,
            &format!("{stage}: waited before the stage (ms)"),
            vec![bems("StageLatency", &function, "p50", "p50"), bems("StageLatency", &function, "p99", "p99")],
            json!({}),
        ));
    }
    let queue_metric = |name: &str, queue: String, label: &str| json!(["AWS/SQS", name, "QueueName", queue, { "stat": "Maximum", "label": label }]);
    let mut depth = Vec::new();
    let mut age = Vec::new();
    let mut dlqs = Vec::new();
    for stage in Stage::ALL {
        depth.push(queue_metric("ApproximateNumberOfMessagesVisible", spec.queue_name(stage), stage.as_str()));
        age.push(queue_metric("ApproximateAgeOfOldestMessage", spec.queue_name(stage), stage.as_str()));
        dlqs.push(queue_metric("ApproximateNumberOfMessagesVisible", spec.dlq_name(stage), stage.as_str()));
        let route = format!("{stage} route");
        depth.push(queue_metric("ApproximateNumberOfMessagesVisible", spec.route_queue_name(stage), &route));
        age.push(queue_metric("ApproximateAgeOfOldestMessage", spec.route_queue_name(stage), &route));
        dlqs.push(queue_metric("ApproximateNumberOfMessagesVisible", spec.route_dlq_name(stage), &route));
    }
    depth.push(queue_metric("ApproximateNumberOfMessagesVisible", spec.status_queue_name(), "status"));
    age.push(queue_metric("ApproximateAgeOfOldestMessage", spec.status_queue_name(), "status"));
    dlqs.push(queue_metric("ApproximateNumberOfMessagesVisible", spec.status_dlq_name(), "status"));
    dlqs.push(queue_metric("ApproximateNumberOfMessagesVisible", spec.bus_dlq_name(), "bus"));
    widgets.push(widget(0, 19, 8, "Queue depth", depth, json!({})));
    widgets.push(widget(
        8,
        19,
        8,
        "Oldest message (s) against the SLA",
        age,
        json!({ "annotations": { "horizontal": [{ "label": "SLA", "value": "${SlaSeconds}" }] } }),
    ));
    widgets.push(widget(16, 19, 8, "Dead-letter queues", dlqs, json!({})));
    let api = spec.api_name();
    let api_metric = |name: &str, stat: &str| json!(["AWS/ApiGateway", name, "ApiName", api, "Stage", STAGE_NAME, { "stat": stat, "label": name }]);
    widgets.push(widget(
        0,
        25,
        12,
        "API requests and errors",
        vec![api_metric("Count", "Sum"), api_metric("4XXError", "Sum"), api_metric("5XXError", "Sum")],
        json!({}),
    ));
    widgets.push(widget(12, 25, 12, "API latency (ms), p99", vec![api_metric("Latency", "p99")], json!({})));
    let body = json!({ "widgets": widgets }).to_string();
    json!({
        "Type": "AWS::CloudWatch::Dashboard",
        "Properties": { "DashboardName": spec.dashboard_name(), "DashboardBody": sub(&body) },
    })
}
