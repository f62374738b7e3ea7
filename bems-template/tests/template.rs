//! The committed cell template is what the generator makes, and what the
//! generator makes is what the routing code says: rules, filter policies and
//! names read back from the JSON files equal the `CellSpec`'s.
//!
//! `BEMS_UPDATE_TEMPLATES=1 cargo test -p bems-template --test template` rewrites
//! `infra/cells/prod-eu-1/` after a change; commit the result.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use bems_core::Stage;
use bems_core::fields::{AccountId, CellId, Region};
use bems_core::partition::PartitionCount;
use bems_core::routing::{CellSpec, EventPattern, FilterPolicy, FilterPolicyScope, Quotas};
use bems_template::{TemplateDefaults, cell_template, rules_file_name};
use serde_json::Value;

/// The committed example: cell `prod-eu-1`, 16 partitions.
fn example() -> CellSpec {
    spec("prod-eu-1", 16, 300)
}

fn spec(cell: &str, partitions: u32, rules_per_bus: u32) -> CellSpec {
    CellSpec::with_quotas(
        CellId::new(cell).expect("cell"),
        // The template uses the pseudo parameters; these are placeholders.
        Region::new("eu-west-1").expect("region"),
        AccountId::new("123456789012").expect("account"),
        PartitionCount::new(partitions).expect("partitions"),
        Quotas { rules_per_bus, ..Quotas::default() },
    )
    .expect("spec")
}

/// The logical-id part of a stage: `Ingestion`.
fn pascal(stage: Stage) -> String {
    let s = stage.as_str();
    s[..1].to_uppercase() + &s[1..]
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../infra/cells/prod-eu-1")
}

#[test]
fn committed_template_is_what_the_generator_makes() {
    let update = std::env::var_os("BEMS_UPDATE_TEMPLATES").is_some();
    let template = cell_template(&example(), &TemplateDefaults::default());
    let mut stale = Vec::new();
    if update {
        fs::create_dir_all(dir()).expect("create infra/cells/prod-eu-1");
    }
    for (name, text) in template.texts() {
        let path = dir().join(&name);
        if update {
            fs::write(&path, &text).expect("write template");
        } else if fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(name);
        }
    }
    let committed: BTreeSet<String> = fs::read_dir(dir())
        .expect("infra/cells/prod-eu-1 exists")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let expected: BTreeSet<String> = template.files.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(committed, expected, "infra/cells/prod-eu-1 holds other files than the generator writes");
    assert!(
        stale.is_empty(),
        "stale template files {stale:?}: run `BEMS_UPDATE_TEMPLATES=1 cargo test -p bems-template --test template` and commit"
    );
}

fn read(name: &str) -> Value {
    let text = fs::read_to_string(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Reads the committed files as a deployer would and compares every rule,
/// filter policy and name with what the routing code produces.
#[test]
fn committed_template_routes_exactly_as_the_cell_spec_does() {
    let spec = example();
    let main = read("cell.json");
    let resources = main["Resources"].as_object().expect("resources");
    let named = |ty: &str, key: &str| -> BTreeSet<String> {
        resources
            .values()
            .filter(|r| r["Type"] == ty)
            .filter_map(|r| r["Properties"][key].as_str().map(str::to_owned))
            .collect()
    };
    let want_queues: BTreeSet<String> = Stage::ALL
        .iter()
        .flat_map(|s| [spec.queue_name(*s), spec.dlq_name(*s), spec.route_queue_name(*s), spec.route_dlq_name(*s)])
        .chain([
            spec.status_queue_name(),
            spec.status_dlq_name(),
            spec.bus_dlq_name(),
            spec.unrouted_queue_name(),
            spec.smoke_queue_name(),
            spec.store_upkeep_dlq_name(),
        ])
        .collect();
    assert_eq!(named("AWS::SQS::Queue", "QueueName"), want_queues);
    let topics = named("AWS::SNS::Topic", "TopicName");
    let fifo: BTreeSet<String> = topics.iter().filter(|t| t.ends_with(".fifo")).cloned().collect();
    assert_eq!(fifo, Stage::ALL.iter().map(|s| spec.topic_name(*s)).collect());
    assert_eq!(
        topics.difference(&fifo).cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from(["bems-prod-eu-1-alerts-critical".to_owned(), "bems-prod-eu-1-alerts-warning".to_owned()])
    );
    assert_eq!(named("AWS::Events::EventBus", "Name"), BTreeSet::from([spec.bus_name()]));

    // Subscriptions: per stage its queue with the stage filter policy, and
    // the status queue unfiltered.
    let subscriptions: Vec<&Value> = resources
        .values()
        .filter(|r| r["Type"] == "AWS::SNS::Subscription" && r["Properties"]["Protocol"] == "sqs")
        .collect();
    assert_eq!(subscriptions.len(), spec.subscriptions().len());
    let filtered: Vec<&Value> =
        subscriptions.iter().copied().filter(|s| s["Properties"]["FilterPolicy"].is_object()).collect();
    assert_eq!(filtered.len(), 8, "per stage: its queue's and the smoke queue's");
    for s in filtered {
        let want = if s["Properties"]["Endpoint"]["Fn::GetAtt"][0] == "SmokeQueue" {
            spec.smoke_filter_policy()
        } else {
            spec.stage_filter_policy()
        };
        let p = &s["Properties"];
        let scope = match p["FilterPolicyScope"].as_str() {
            Some("MessageBody") => FilterPolicyScope::MessageBody,
            Some("MessageAttributes") | None => FilterPolicyScope::MessageAttributes,
            Some(other) => panic!("unknown filter policy scope {other}"),
        };
        let policy = FilterPolicy::from_json(&p["FilterPolicy"].to_string(), scope).expect("a valid policy");
        assert_eq!(policy, want);
    }

    // Request models: the committed bems-schema files plus the cell's
    // constraints (partition at most P, the cell's id, Region and account),
    // and nothing else changed.
    for stage in Stage::ALL {
        let committed = fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../bems-schema/schemas/{stage}-request.v1.json")),
        )
        .expect("committed schema");
        let mut committed: Value = serde_json::from_str(&committed).expect("schema JSON");
        let metadata = &mut committed["properties"]["metadata"]["properties"];
        metadata["partition"]["maximum"] = serde_json::json!(16);
        metadata["cellId"]["enum"] = serde_json::json!(["prod-eu-1"]);
        metadata["region"]["enum"] = serde_json::json!([{ "Ref": "AWS::Region" }]);
        metadata["accountId"]["enum"] = serde_json::json!([{ "Ref": "AWS::AccountId" }]);
        let model = resources
            .values()
            .find(|r| {
                r["Type"] == "AWS::ApiGateway::Model"
                    && r["Properties"]["Name"] == bems_template::api::model_name(stage)
            })
            .unwrap_or_else(|| panic!("no {stage} model"));
        assert_eq!(model["Properties"]["Schema"], committed, "{stage} model");
    }

    // Events of our source no stage rule takes: one rule in the main stack,
    // with the spec's pattern, to the unrouted queue.
    let unrouted = &resources["UnroutedRule"]["Properties"];
    assert_eq!(unrouted["Name"], spec.unrouted_rule_name().as_str());
    assert_eq!(EventPattern::from_value(&unrouted["EventPattern"]).expect("a valid pattern"), spec.unrouted_pattern());
    assert_eq!(unrouted["Targets"][0]["Arn"]["Fn::GetAtt"][0], "UnroutedQueue");
    assert_eq!(resources["UnroutedQueue"]["Properties"]["QueueName"], spec.unrouted_queue_name().as_str());

    // Rules: one nested stack per stage, one rule per partition, each with
    // the spec's pattern, name and message group, targeting the queue the
    // main stack passes as `RouteQueueArn`: the spec's route queue.
    for stage in Stage::ALL {
        let nested = resources
            .values()
            .find(|r| {
                r["Type"] == "AWS::CloudFormation::Stack" && r["Properties"]["TemplateURL"] == rules_file_name(stage)
            })
            .unwrap_or_else(|| panic!("no nested stack for {}", rules_file_name(stage)));
        let route_id = nested["Properties"]["Parameters"]["RouteQueueArn"]["Fn::GetAtt"][0].as_str().expect("a queue");
        let route_name = &resources[route_id]["Properties"]["QueueName"];
        let rules = read(&rules_file_name(stage));
        let rules = rules["Resources"].as_object().expect("resources");
        let want: Vec<_> = spec.stage_rules().into_iter().filter(|r| r.stage == stage).collect();
        assert_eq!(rules.len(), want.len(), "{stage}");
        for rule in want {
            let found = rules
                .values()
                .find(|r| r["Properties"]["Name"] == rule.name.as_str())
                .unwrap_or_else(|| panic!("{} is not in {}", rule.name, rules_file_name(stage)));
            let pattern = EventPattern::from_value(&found["Properties"]["EventPattern"]).expect("a valid pattern");
            assert_eq!(pattern, rule.pattern, "{}", rule.name);
            let target = &found["Properties"]["Targets"][0];
            assert_eq!(target["SqsParameters"]["MessageGroupId"], rule.message_group_id.as_str());
            assert_eq!(target["Arn"]["Ref"], "RouteQueueArn");
            assert_eq!(*route_name, rule.route_queue.as_str(), "{}", rule.name);
        }
    }
}

/// Every queue has its depth and age alarms, every DLQ (the bus's too) a
/// not-empty alarm, and the composite alarm names every critical one.
#[test]
fn every_queue_and_dlq_is_watched() {
    let main = read("cell.json");
    let resources = main["Resources"].as_object().expect("resources");
    let alarms: Vec<&Value> = resources.values().filter(|r| r["Type"] == "AWS::CloudWatch::Alarm").collect();
    let watched = |metric: &str, queue_id: &str| {
        alarms.iter().any(|a| {
            a["Properties"]["MetricName"] == metric
                && a["Properties"]["Dimensions"][0]["Value"]["Fn::GetAtt"][0] == queue_id
        })
    };
    // The smoke queue holds only `bems smoke`'s own invoices, for minutes.
    for (id, r) in resources.iter().filter(|(id, r)| r["Type"] == "AWS::SQS::Queue" && *id != "SmokeQueue") {
        if id.ends_with("Dlq") || id == "UnroutedQueue" {
            assert!(watched("ApproximateNumberOfMessagesVisible", id), "{id}: no not-empty alarm");
        } else {
            assert!(watched("ApproximateAgeOfOldestMessage", id), "{id}: no age alarm");
            assert!(watched("ApproximateNumberOfMessagesVisible", id), "{id}: no depth alarm");
            assert!(r["Properties"]["RedrivePolicy"].is_object(), "{id}: no DLQ");
        }
    }
    let critical: Vec<&String> = resources
        .iter()
        .filter(|(_, r)| {
            r["Type"] == "AWS::CloudWatch::Alarm" && r["Properties"]["AlarmActions"][0]["Ref"] == "AlertsCritical"
        })
        .map(|(id, _)| id)
        .collect();
    // With a store the composite names every critical alarm; without one,
    // every critical alarm that exists without one.
    let rule = &resources["CriticalCompositeAlarm"]["Properties"]["AlarmRule"]["Fn::If"];
    assert_eq!(rule[0], "WithStore");
    for (branch, with_store) in [(&rule[1], true), (&rule[2], false)] {
        let text = branch["Fn::Sub"].as_str().expect("rule");
        let named: Vec<&&String> =
            critical.iter().filter(|id| with_store || resources[id.as_str()].get("Condition").is_none()).collect();
        for id in &named {
            assert!(text.contains(&format!("${{{id}}}")), "{id} is missing from the composite alarm: {text}");
        }
        assert_eq!(text.matches("ALARM(").count(), named.len(), "{text}");
    }
}

/// Each function's role names only the resources that function touches:
/// its queue and DLQ, its log group, the cell key, and the bus
/// (processors) or the Timestream table (writer); the forwarder its four
/// route queues, its log group, the key and the four topics.
#[test]
fn every_function_touches_only_its_own_resources() {
    let main = read("cell.json");
    let resources = main["Resources"].as_object().expect("resources");
    let mut functions = 0;
    for (id, r) in resources.iter().filter(|(_, r)| r["Type"] == "AWS::Serverless::Function") {
        functions += 1;
        let role = r["Properties"]["Role"]["Fn::GetAtt"][0].as_str().unwrap_or_else(|| panic!("{id}: no role"));
        let policy = resources[role]["Properties"]["Policies"].to_string();
        let referenced: BTreeSet<String> =
            resources.keys().filter(|other| policy.contains(&format!("[\"{other}\",\"Arn\"]"))).cloned().collect();
        let routes = Stage::ALL.map(|s| format!("{}Route", pascal(s)));
        let logs = format!("{id}Logs");
        let (want, sources): (BTreeSet<String>, Vec<String>) = match (id.strip_suffix("Processor"), id.as_str()) {
            (Some(stage), _) => (
                [format!("{stage}Queue"), format!("{stage}Dlq"), "CellKey".into(), "Bus".into(), logs].into(),
                vec![format!("{stage}Queue")],
            ),
            (None, "RouteForwarder") => {
                (routes.iter().cloned().chain(["CellKey".to_owned(), logs]).collect(), routes.to_vec())
            }
            (None, "TimestreamWriter") => (
                ["StatusQueue".into(), "StatusDlq".into(), "CellKey".into(), "TimestreamTable".into(), logs].into(),
                vec!["StatusQueue".to_owned()],
            ),
            // The database is named by its resource id (rds-db:connect),
            // checked in database.rs.
            (None, _) => (
                ["StatusQueue".into(), "StatusDlq".into(), "CellKey".into(), logs].into(),
                vec!["StatusQueue".to_owned()],
            ),
        };
        assert_eq!(referenced, want, "{id}");
        // Topics are named by Ref: only the forwarder publishes, to the four stage topics.
        let published: BTreeSet<String> =
            resources.keys().filter(|other| policy.contains(&format!("{{\"Ref\":\"{other}\"}}"))).cloned().collect();
        let topics: BTreeSet<String> = if id == "RouteForwarder" {
            Stage::ALL.iter().map(|s| format!("{}Topic", pascal(*s))).collect()
        } else {
            BTreeSet::new()
        };
        assert_eq!(published, topics, "{id}");
        // And nothing with a wildcard but tracing, endpoint discovery and
        // describing network interfaces, which take no resource.
        let statements = &resources[role]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"];
        for statement in statements.as_array().expect("statements") {
            if statement["Resource"] == "*" {
                let action = statement["Action"].to_string();
                assert!(
                    action == r#""timestream:DescribeEndpoints""#
                        || action == r#"["xray:PutTraceSegments","xray:PutTelemetryRecords"]"#
                        || (id == "PostgresWriter"
                            && action == r#"["ec2:DescribeNetworkInterfaces","ec2:DescribeSubnets"]"#),
                    "{id}: {statement}"
                );
            }
        }
        let events = r["Properties"]["Events"].as_object().expect("events");
        let got: Vec<String> = events
            .values()
            .filter_map(|e| e["Properties"]["Queue"]["Fn::GetAtt"][0].as_str().map(str::to_owned))
            .collect();
        assert_eq!(got.iter().collect::<BTreeSet<_>>(), sources.iter().collect::<BTreeSet<_>>(), "{id}: event sources");
        for e in events.values() {
            assert_eq!(e["Properties"]["FunctionResponseTypes"][0], "ReportBatchItemFailures", "{id}");
        }
    }
    assert_eq!(functions, 7);
}

/// 99 partitions: 396 stage rules, still within a stack's 500 resources
/// because each stage's rules are a nested stack.
#[test]
fn the_largest_cell_fits_cloudformation_s_limits() {
    let spec = spec("big", 99, 400);
    let template = cell_template(&spec, &TemplateDefaults::default());
    for (name, value) in &template.files {
        let count = value["Resources"].as_object().map_or(0, serde_json::Map::len);
        assert!(count <= 500, "{name}: {count} resources");
        // Templates above 51,200 bytes must go through S3, which `sam deploy`
        // does; the S3 limit is 1 MB.
        let bytes = serde_json::to_string(value).expect("json").len();
        assert!(bytes < 1_000_000, "{name}: {bytes} bytes");
    }
    let rules: usize = Stage::ALL
        .iter()
        .map(|s| {
            template.file(&rules_file_name(*s)).expect("rules file")["Resources"]
                .as_object()
                .map_or(0, serde_json::Map::len)
        })
        .sum();
    assert_eq!(rules, 396);
}

/// The security stack's rules evaluate only resource types its recorder
/// records, every Config rule waits for a recorder, and the monitoring role
/// reads this cell's resources and writes nothing.
#[test]
fn the_security_stack_is_consistent() {
    let security = read("security.json");
    let resources = security["Resources"].as_object().expect("resources");
    let recorded: BTreeSet<&str> = resources["ConfigRecorder"]["Properties"]["RecordingGroup"]["ResourceTypes"]
        .as_array()
        .expect("types")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut rules = 0;
    for (id, r) in resources.iter().filter(|(_, r)| r["Type"] == "AWS::Config::ConfigRule") {
        rules += 1;
        assert_eq!(r["DependsOn"][0], "RecorderReady", "{id}");
        for t in r["Properties"]["Scope"]["ComplianceResourceTypes"].as_array().into_iter().flatten() {
            assert!(recorded.contains(t.as_str().unwrap_or_default()), "{id}: {t} is not recorded");
        }
        assert!(r["Properties"]["ConfigRuleName"].as_str().is_some_and(|n| n.starts_with("bems-prod-eu-1-")), "{id}");
    }
    assert!(rules >= 15, "{rules} rules");
    let policy = &resources["MonitoringRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"];
    for statement in policy.as_array().expect("statements") {
        let actions: Vec<&str> = match &statement["Action"] {
            Value::String(a) => vec![a.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            other => panic!("actions {other}"),
        };
        for action in actions {
            let verb = action.split(':').nth(1).unwrap_or_default();
            assert!(
                ["Get", "List", "Describe", "Filter", "Select", "StartQuery"].iter().any(|v| verb.starts_with(v)),
                "the monitoring role may {action}"
            );
        }
        if statement["Resource"] != "*" {
            // The cell's names; Timestream's spell the id with underscores.
            let named = statement["Resource"].to_string();
            assert!(named.contains("prod-eu-1") || named.contains("bems_prod_eu_1"), "{statement}");
        }
    }
}

/// The services' alarms watch this cell's resources: every function's
/// errors and throttles, the API's 4xx and 5xx by its name and stage, and
/// EventBridge's failures summed over the cell's bus.
#[test]
fn every_function_the_api_and_the_bus_are_watched() {
    let main = read("cell.json");
    let resources = main["Resources"].as_object().expect("resources");
    let alarms: Vec<&Value> = resources.values().filter(|r| r["Type"] == "AWS::CloudWatch::Alarm").collect();
    let stat = |a: &Value, namespace: &str, metric: &str| -> Option<Value> {
        a["Properties"]["Metrics"].as_array()?.iter().find_map(|m| {
            let s = &m["MetricStat"]["Metric"];
            (s["Namespace"] == namespace && s["MetricName"] == metric).then(|| s["Dimensions"].clone())
        })
    };
    for (id, _) in resources.iter().filter(|(_, r)| r["Type"] == "AWS::Serverless::Function") {
        for metric in ["Errors", "Throttles"] {
            // (The status writer's alarms name whichever of its two
            // functions the store made.)
            let watched = alarms.iter().any(|a| {
                stat(a, "AWS/Lambda", metric).is_some_and(|d| {
                    d[0]["Value"]["Ref"] == id.as_str()
                        || d[0]["Value"]["Fn::If"].as_array().is_some_and(|b| b.iter().any(|v| v["Ref"] == id.as_str()))
                })
            });
            assert!(watched, "{id}: no {metric} alarm");
        }
    }
    let api_name = resources.values().find(|r| r["Type"] == "AWS::ApiGateway::RestApi").expect("the API")["Properties"]
        ["Name"]
        .clone();
    for metric in ["4XXError", "5XXError"] {
        let watched = alarms.iter().any(|a| {
            stat(a, "AWS/ApiGateway", metric).is_some_and(|d| d[0]["Value"] == api_name && d[1]["Value"] == "v1")
        });
        assert!(watched, "no {metric} alarm on {api_name}");
    }
    let bus = example().bus_name();
    for metric in ["FailedInvocations", "InvocationsFailedToBeSentToDlq", "ThrottledRules"] {
        let watched = alarms.iter().any(|a| {
            a["Properties"]["Metrics"][0]["Expression"].as_str().is_some_and(|q| {
                q.contains(&format!("SUM({metric})")) && q.contains(&format!("EventBusName = '{bus}'"))
            })
        });
        assert!(watched, "no {metric} alarm on {bus}");
    }
}
