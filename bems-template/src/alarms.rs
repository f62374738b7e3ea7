//! Alarms and alert topics.

use std::collections::BTreeMap;

use bems_core::Stage;
use bems_core::contract::{CELL_DIMENSION, CLASS_DIMENSION, FUNCTION_DIMENSION, Function, METRICS_NAMESPACE};
use bems_core::routing::CellSpec;
use serde_json::{Value, json};

use super::*;

/// The alarms: what pages someone (critical) and what warns operations.
///
/// - critical: any message in any DLQ (the bus DLQ is where EventBridge puts
///   what it failed to deliver after its retries, so it stands for failed
///   invocations without one alarm per rule); a queue's oldest message older
///   than the SLA; the p99 of the writer's visibility latency (event time to
///   stored) above the SLA;
/// - warning: a queue's oldest message older than the warning age; a queue
///   deeper than the threshold for five minutes;
/// - the services: EventBridge failed invocations (critical) and events it
///   could not even dead-letter (critical: lost), throttled rules (warning),
///   API 5xx (critical) and 4xx (warning) rates, each function's errors and
///   throttles (warning); the Aurora cluster above 90% of its maximum
///   capacity for 15 minutes and a failed daily store upkeep (warnings,
///   `Store=aurora`);
/// - a composite alarm `bems-C-critical` that is in alarm when any critical
///   one is, for a single page.
pub(super) fn monitoring(
    spec: &CellSpec,
    resources: &mut BTreeMap<String, Value>,
    outputs: &mut BTreeMap<String, Value>,
) {
    let cell = spec.cell_id().as_str();
    for (severity, logical) in [("critical", "AlertsCritical"), ("warning", "AlertsWarning")] {
        resources.insert(
            logical.into(),
            json!({
                "Type": "AWS::SNS::Topic",
                "Properties": { "TopicName": spec.alerts_topic_name(severity), "KmsMasterKeyId": reference("CellKey") },
            }),
        );
        resources.insert(
            format!("{logical}Email"),
            json!({
                "Type": "AWS::SNS::Subscription",
                "Condition": "HasAlertEmail",
                "Properties": { "TopicArn": reference(logical), "Protocol": "email", "Endpoint": reference("AlertEmail") },
            }),
        );
        outputs.insert(format!("{logical}TopicArn"), json!({ "Value": reference(logical) }));
    }

    let sqs_alarm =
        |name: String, description: String, queue: &str, metric: &str, threshold: Value, periods: u32, topic: &str| {
            json!({
                "Type": "AWS::CloudWatch::Alarm",
                "Properties": {
                    "AlarmName": name,
                    "AlarmDescription": description,
                    "Namespace": "AWS/SQS",
                    "MetricName": metric,
                    "Dimensions": [{ "Name": "QueueName", "Value": get_att(queue, "QueueName") }],
                    "Statistic": "Maximum",
                    "Period": 60,
                    "EvaluationPeriods": periods,
                    "Threshold": threshold,
                    "ComparisonOperator": "GreaterThanThreshold",
                    "TreatMissingData": "notBreaching",
                    "AlarmActions": [reference(topic)],
                    "OKActions": [reference(topic)],
                },
            })
        };
    let mut critical: Vec<String> = Vec::new();
    // Critical alarms that exist only with a store.
    let mut critical_with_store: Vec<String> = Vec::new();
    // (alarm id prefix, alarm name part, queue, its DLQ, what it is)
    let mut queues: Vec<(String, String, String, String, String)> = Vec::new();
    for s in Stage::ALL {
        let p = pascal(s);
        queues.push((p.clone(), s.to_string(), format!("{p}Queue"), format!("{p}Dlq"), format!("the {s} queue")));
        queues.push((
            format!("{p}Route"),
            format!("{s}-route"),
            format!("{p}Route"),
            format!("{p}RouteDlq"),
            format!("the {s} route queue"),
        ));
    }
    queues.push((
        "Status".into(),
        "status".into(),
        "StatusQueue".into(),
        "StatusDlq".into(),
        "the status-change queue".into(),
    ));
    for (p, slug, queue, dlq, what) in &queues {
        let (queue, dlq) = (queue.as_str(), dlq.as_str());
        // Without a store nothing of ours reads the status queue: its age
        // passes the SLA within minutes of the first event and would hold
        // the composite alarm in ALARM, so that no other critical alarm
        // pages again. It pages only with a store; the warnings stay.
        let paging_condition = (queue == "StatusQueue").then_some("WithStore");
        let id = format!("{p}DlqNotEmptyAlarm");
        resources.insert(
            id.clone(),
            sqs_alarm(
                format!("bems-{cell}-{slug}-dlq-not-empty"),
                format!(
                    "A message of {what} was dead-lettered: an invoice is stuck. `bems redrive` after fixing the cause."
                ),
                dlq,
                "ApproximateNumberOfMessagesVisible",
                json!(0),
                1,
                "AlertsCritical",
            ),
        );
        critical.push(id);
        let id = format!("{p}QueueOverSlaAlarm");
        let mut over_sla = sqs_alarm(
            format!("bems-{cell}-{slug}-oldest-over-sla"),
            format!("The oldest message of {what} has waited longer than the SLA."),
            queue,
            "ApproximateAgeOfOldestMessage",
            reference("SlaSeconds"),
            1,
            "AlertsCritical",
        );
        match paging_condition {
            Some(condition) => {
                over_sla["Condition"] = json!(condition);
                critical_with_store.push(id.clone());
            }
            None => critical.push(id.clone()),
        }
        resources.insert(id, over_sla);
        resources.insert(
            format!("{p}QueueAgeAlarm"),
            sqs_alarm(
                format!("bems-{cell}-{slug}-oldest-age"),
                format!("The oldest message of {what} is older than the warning age: it is falling behind."),
                queue,
                "ApproximateAgeOfOldestMessage",
                reference("QueueAgeWarningSeconds"),
                1,
                "AlertsWarning",
            ),
        );
        resources.insert(
            format!("{p}QueueDepthAlarm"),
            sqs_alarm(
                format!("bems-{cell}-{slug}-depth"),
                format!("{} has held more messages than the threshold for five minutes.", capitalized(what)),
                queue,
                "ApproximateNumberOfMessagesVisible",
                reference("QueueDepthThreshold"),
                5,
                "AlertsWarning",
            ),
        );
    }
    for stage in Stage::ALL {
        let what = format!("the {stage} processor");
        resources.insert(
            format!("{}ErrorRateAlarm", pascal(stage)),
            error_rate_alarm(cell, &Function::Processor(stage).metrics_name(), &stage.to_string(), &what),
        );
    }
    resources.insert(
        "RouteForwarderErrorRateAlarm".into(),
        error_rate_alarm(cell, &Function::RouteForwarder.metrics_name(), "route-forwarder", "the route forwarder"),
    );
    resources.insert(
        "BusDlqNotEmptyAlarm".into(),
        sqs_alarm(
            format!("bems-{cell}-bus-dlq-not-empty"),
            "EventBridge could not deliver an event to a route queue after its retries (failed invocations land here)."
                .into(),
            "BusDlq",
            "ApproximateNumberOfMessagesVisible",
            json!(0),
            1,
            "AlertsCritical",
        ),
    );
    critical.push("BusDlqNotEmptyAlarm".into());
    resources.insert(
        "UnroutedNotEmptyAlarm".into(),
        sqs_alarm(
            format!("bems-{cell}-unrouted-not-empty"),
            "An event of the cell's source matched no stage rule (a partition outside 1..P, another cell's id, a missing field): it is kept in the unrouted queue, unprocessed. Fix the producer, then send the corrected event again."
                .into(),
            "UnroutedQueue",
            "ApproximateNumberOfMessagesVisible",
            json!(0),
            1,
            "AlertsCritical",
        ),
    );
    critical.push("UnroutedNotEmptyAlarm".into());
    // The store's daily upkeep failed after its retries: partitions not
    // made ahead (before the first `bems store migrate`, or the database
    // refused), or rows waiting in the default partition. Nothing is lost
    // (such rows stay in the default partition), so it warns.
    let mut upkeep = sqs_alarm(
        spec.resource_name("store-upkeep-failed"),
        "A daily store upkeep statement failed after its retries (the dead-letter message holds the database's answer): partitions for the months ahead not made, or status changes waiting in the default partition. Run bems store partitions and bems store check (docs/store.md)."
            .into(),
        "StoreUpkeepDlq",
        "ApproximateNumberOfMessagesVisible",
        json!(0),
        1,
        "AlertsWarning",
    );
    upkeep["Condition"] = json!("WithAurora");
    resources.insert("StoreUpkeepFailedAlarm".into(), upkeep);
    resources.insert(
        "VisibilityOverSlaAlarm".into(),
        json!({
            "Type": "AWS::CloudWatch::Alarm",
            "Properties": {
                "AlarmName": format!("bems-{cell}-visibility-p99-over-sla"),
                "AlarmDescription": "p99 of event time to stored (the status writer's VisibilityLatency) is above the SLA.",
                "Metrics": [
                    {
                        "Id": "latency",
                        "MetricStat": {
                            "Metric": {
                                "Namespace": METRICS_NAMESPACE,
                                "MetricName": "VisibilityLatency",
                                "Dimensions": [
                                    { "Name": CELL_DIMENSION, "Value": cell },
                                    { "Name": FUNCTION_DIMENSION, "Value": Function::StatusWriter.metrics_name() },
                                ],
                            },
                            "Period": 60,
                            "Stat": "p99",
                        },
                        "ReturnData": false,
                    },
                    { "Id": "seconds", "Expression": "latency / 1000", "Label": "p99 visibility latency (s)", "ReturnData": true },
                ],
                "EvaluationPeriods": 3,
                "DatapointsToAlarm": 2,
                "Threshold": reference("SlaSeconds"),
                "ComparisonOperator": "GreaterThanThreshold",
                "TreatMissingData": "notBreaching",
                "AlarmActions": [reference("AlertsCritical")],
                "OKActions": [reference("AlertsCritical")],
            },
        }),
    );
    critical.push("VisibilityOverSlaAlarm".into());
    critical.extend(service_alarms(spec, resources));
    critical.sort();
    let rule = |ids: &[&String]| ids.iter().map(|a| format!("ALARM(\"${{{a}}}\")")).collect::<Vec<_>>().join(" OR ");
    let without_store: Vec<&String> = critical.iter().collect();
    let mut with_store = without_store.clone();
    with_store.extend(critical_with_store.iter());
    with_store.sort();
    resources.insert(
        "CriticalCompositeAlarm".into(),
        json!({
            "Type": "AWS::CloudWatch::CompositeAlarm",
            "Properties": {
                "AlarmName": critical_alarm_name(spec),
                "AlarmDescription": "Any critical alarm of the cell: one page, however many parts broke.",
                "AlarmRule": { "Fn::If": ["WithStore", sub(&rule(&with_store)), sub(&rule(&without_store))] },
                "AlarmActions": [reference("AlertsCritical")],
            },
        }),
    );
}

/// A function's error rate from its EMF counts (namespace `BEMS`,
/// dimensions `Cell`, `Function` and, for failures, `class`): records that
/// failed or were dead-lettered, of all records, in percent. Held-back
/// records are a consequence of another failure and do not count again.
/// `slug` names the alarm, `what` describes the function.
pub(super) fn error_rate_alarm(cell: &str, function: &str, slug: &str, what: &str) -> Value {
    let metric = |id: &str, name: &str, class: Option<&str>| {
        let mut dimensions = vec![
            json!({ "Name": CELL_DIMENSION, "Value": cell }),
            json!({ "Name": FUNCTION_DIMENSION, "Value": function }),
        ];
        if let Some(class) = class {
            dimensions.push(json!({ "Name": CLASS_DIMENSION, "Value": class }));
        }
        json!({
            "Id": id,
            "MetricStat": {
                "Metric": { "Namespace": METRICS_NAMESPACE, "MetricName": name, "Dimensions": dimensions },
                "Period": 60,
                "Stat": "Sum",
            },
            "ReturnData": false,
        })
    };
    let failures = "FILL(ft,0)+FILL(fb,0)+FILL(fp,0)+FILL(db,0)+FILL(dp,0)";
    json!({
        "Type": "AWS::CloudWatch::Alarm",
        "Properties": {
            "AlarmName": format!("bems-{cell}-{slug}-error-rate"),
            "AlarmDescription": format!("More than ErrorRatePercent of {what}'s records failed, five minutes running."),
            "Metrics": [
                metric("ok", "Processed", None),
                metric("ft", "Failed", Some("transient")),
                metric("fb", "Failed", Some("business")),
                metric("fp", "Failed", Some("poison")),
                metric("db", "DeadLettered", Some("business")),
                metric("dp", "DeadLettered", Some("poison")),
                {
                    "Id": "rate",
                    "Expression": format!("100 * ({failures}) / (FILL(ok,0) + {failures})"),
                    "Label": format!("{slug} error rate (%)"),
                    "ReturnData": true,
                },
            ],
            "EvaluationPeriods": 5,
            "Threshold": reference("ErrorRatePercent"),
            "ComparisonOperator": "GreaterThanThreshold",
            "TreatMissingData": "notBreaching",
            "AlarmActions": [reference("AlertsWarning")],
            "OKActions": [reference("AlertsWarning")],
        },
    })
}

/// The services' own alarms; returns the ids of the critical ones.
fn service_alarms(spec: &CellSpec, resources: &mut BTreeMap<String, Value>) -> Vec<String> {
    let cell = spec.cell_id().as_str();
    let bus = spec.bus_name();
    let alarm =
        |name: String, description: &str, metrics: Value, threshold: Value, periods: (u32, u32), topic: &str| {
            json!({
                "Type": "AWS::CloudWatch::Alarm",
                "Properties": {
                    "AlarmName": name,
                    "AlarmDescription": description,
                    "Metrics": metrics,
                    "EvaluationPeriods": periods.1,
                    "DatapointsToAlarm": periods.0,
                    "Threshold": threshold,
                    "ComparisonOperator": "GreaterThanThreshold",
                    "TreatMissingData": "notBreaching",
                    "AlarmActions": [reference(topic)],
                    "OKActions": [reference(topic)],
                },
            })
        };
    // EventBridge reports per rule (dimensions EventBusName, RuleName):
    // one Metrics Insights query sums every rule on the cell's bus (the
    // stage rules, the unrouted rule, the archive's).
    let bus_sum = |metric: &str| {
        json!([{
            "Id": "total",
            "Expression": format!(
                "SELECT SUM({metric}) FROM SCHEMA(\"AWS/Events\", EventBusName, RuleName) WHERE EventBusName = '{bus}'"
            ),
            "Period": 60,
            "Label": format!("{metric} on {bus}"),
            "ReturnData": true,
        }])
    };
    let mut critical = Vec::new();
    resources.insert(
        "BusFailedInvocationsAlarm".into(),
        alarm(
            format!("bems-{cell}-bus-failed-invocations"),
            "EventBridge failed to deliver events to a route queue for good (after its retries); they are in the bus DLQ.",
            bus_sum("FailedInvocations"),
            json!(0),
            (1, 1),
            "AlertsCritical",
        ),
    );
    critical.push("BusFailedInvocationsAlarm".to_owned());
    resources.insert(
        "BusDeadLetterFailedAlarm".into(),
        alarm(
            format!("bems-{cell}-bus-events-lost"),
            "EventBridge could neither deliver events nor put them in the bus DLQ: those events are lost. Check the DLQ's policy and key.",
            bus_sum("InvocationsFailedToBeSentToDlq"),
            json!(0),
            (1, 1),
            "AlertsCritical",
        ),
    );
    critical.push("BusDeadLetterFailedAlarm".to_owned());
    resources.insert(
        "BusThrottledAlarm".into(),
        alarm(
            format!("bems-{cell}-bus-throttled"),
            "EventBridge throttled the cell's rules in 3 of the last 5 minutes (deliveries are delayed): raise the invocations quota.",
            bus_sum("ThrottledRules"),
            json!(0),
            (3, 5),
            "AlertsWarning",
        ),
    );

    // The API: errors as a share of requests (the metrics' average).
    let api_rate = |metric: &str| {
        json!([
            {
                "Id": "share",
                "MetricStat": {
                    "Metric": {
                        "Namespace": "AWS/ApiGateway",
                        "MetricName": metric,
                        "Dimensions": [
                            { "Name": "ApiName", "Value": spec.api_name() },
                            { "Name": "Stage", "Value": crate::api::STAGE_NAME },
                        ],
                    },
                    "Period": 60,
                    "Stat": "Average",
                },
                "ReturnData": false,
            },
            { "Id": "percent", "Expression": "100 * share", "Label": format!("{metric} (%)"), "ReturnData": true },
        ])
    };
    resources.insert(
        "Api5xxAlarm".into(),
        alarm(
            format!("bems-{cell}-api-5xx"),
            "More than Api5xxRatePercent of API requests failed on our side in 3 of 5 minutes: producers' events are not getting in.",
            api_rate("5XXError"),
            reference("Api5xxRatePercent"),
            (3, 5),
            "AlertsCritical",
        ),
    );
    critical.push("Api5xxAlarm".to_owned());
    resources.insert(
        "Api4xxAlarm".into(),
        alarm(
            format!("bems-{cell}-api-4xx"),
            "More than Api4xxRatePercent of API requests were refused (invalid events, bad keys, throttling) for 5 minutes: a producer needs attention.",
            api_rate("4XXError"),
            reference("Api4xxRatePercent"),
            (5, 5),
            "AlertsWarning",
        ),
    );

    // The Aurora cluster at its maximum capacity: queries and writes slow
    // down, the status queue's age grows next (its alarms page).
    let mut capacity = alarm(
        spec.resource_name("database-at-max-capacity"),
        "The Aurora cluster has used more than 90% of AuroraMaxCapacity for 15 minutes: raise AuroraMaxCapacity (max_connections follows it) before the status queue falls behind.",
        json!([{
            "Id": "acu",
            "MetricStat": {
                "Metric": {
                    "Namespace": "AWS/RDS",
                    "MetricName": "ACUUtilization",
                    "Dimensions": [{ "Name": "DBClusterIdentifier", "Value": reference("AuroraCluster") }],
                },
                "Period": 60,
                // The busiest instance: with a reader, an average over the
                // two would hide a saturated writer.
                "Stat": "Maximum",
            },
            "ReturnData": true,
        }]),
        json!(90),
        (15, 15),
        "AlertsWarning",
    );
    capacity["Condition"] = json!("WithAurora");
    resources.insert("DatabaseCapacityAlarm".into(), capacity);

    // Each function: invocations that failed as a whole (a crash, a
    // timeout: the whole batch comes back) and throttles (the account's
    // concurrency quota reached: the queues wait).
    for function in Function::ALL {
        let (logical, name) = (function_logical_id(function), spec.function_name(function));
        let condition = (function == Function::StatusWriter).then_some("WithStore");
        // The status writer is one of two functions, by store.
        let function_ref = if function == Function::StatusWriter {
            json!({ "Fn::If": ["WithPostgres", reference("PostgresWriter"), reference("TimestreamWriter")] })
        } else {
            reference(&logical)
        };
        for (metric, what) in [("Errors", "invocations failed as a whole"), ("Throttles", "invocations were throttled")]
        {
            let metrics = json!([{
                "Id": "count",
                "MetricStat": {
                    "Metric": {
                        "Namespace": "AWS/Lambda",
                        "MetricName": metric,
                        "Dimensions": [{ "Name": "FunctionName", "Value": function_ref.clone() }],
                    },
                    "Period": 60,
                    "Stat": "Sum",
                },
                "ReturnData": true,
            }]);
            let mut watch = alarm(
                spec.resource_name(&format!("{}-{}", function.metrics_name(), metric.to_lowercase())),
                &format!("{name}: {what} in 3 of the last 5 minutes."),
                metrics,
                json!(0),
                (3, 5),
                "AlertsWarning",
            );
            if let Some(condition) = condition {
                watch["Condition"] = json!(condition);
            }
            resources.insert(format!("{logical}{metric}Alarm"), watch);
        }
    }
    critical
}

/// The composite alarm that pages: any critical alarm of the cell.
pub(super) fn critical_alarm_name(spec: &CellSpec) -> String {
    spec.resource_name("critical")
}
