//! # bems-template
//!
//! A BEMS cell's CloudFormation (SAM) template, generated from its
//! [`CellSpec`]; no AWS SDK, so a deployment pipeline can depend on it
//! alone.
//!
//! The rules, filter policies and names deployed on AWS come from the same
//! code the tests exercise (`bems_core::routing`, `bems_core::contract`),
//! so they cannot drift: `bems template` writes the files, and a test
//! regenerates the committed example and compares it byte for byte (see
//! `infra/README.md`). [`emulator_template`] is the part LocalStack can
//! run, which `bems provision` deploys for the end-to-end tests and the
//! local cell; [`api`] holds the ingress's models, mapping template and
//! responses.
//!
//! ```
//! use bems_core::fields::{AccountId, CellId, Region};
//! use bems_core::partition::PartitionCount;
//! use bems_core::routing::CellSpec;
//! use bems_template::{TemplateDefaults, cell_template};
//!
//! let spec = CellSpec::new(
//!     CellId::new("prod-eu-1").unwrap(),
//!     Region::new("eu-west-1").unwrap(),
//!     AccountId::new("123456789012").unwrap(),
//!     PartitionCount::new(16).unwrap(),
//! )
//! .unwrap();
//! let template = cell_template(&spec, &TemplateDefaults::default());
//! let main = template.file("cell.json").unwrap();
//! assert!(main["Resources"]["IngestionTopic"]["Properties"]["FifoTopic"] == true);
//! ```
//!
//! Files, for a cell `C`:
//!
//! - `cell.json`: the main stack: bus, archive, bus DLQ, the cell's customer
//!   managed KMS key (topics and queues), per stage the SQS FIFO route queue
//!   (and DLQ) the rules deliver to, the SNS FIFO topic, its SQS FIFO queue
//!   and DLQ and the filtered subscription, the status-change queue (and
//!   DLQ) subscribed to every topic, the smoke queue (smoke-test invoices
//!   only), the unrouted rule and queue (events of our source no stage
//!   rule takes), the policies that let exactly these services talk, the
//!   API, the six functions (four processors, the route forwarder, the
//!   Timestream writer, the last with `Store=timestream` only) with their
//!   roles, the alarms, and one nested stack of rules per stage;
//! - `rules-<stage>.json`: that stage's rule per partition, each with one
//!   target (the stage's route queue, static message group `<stage>-pNN`, a
//!   DLQ and a retry policy). Nested because 99 partitions make 396 rules
//!   and a stack holds at most 500 resources;
//! - `security.json`: the optional security stack ([`security_template`]).
//!
//! Why route queues: a classic EventBridge rule can set a FIFO message
//! group only for an SQS FIFO target (`SqsParameters`; rules have no SNS
//! parameters), so the route forwarder (`bems_lambda::forward`) carries
//! each stage's events from its route queue to its topic, group kept.
//!
//! Why a customer managed key: EventBridge cannot send to a queue encrypted
//! with the AWS managed key (`alias/aws/sqs`), nor SNS to one: the key's
//! policy cannot be changed to let the services use it. One key per cell, with a data key reuse period
//! of an hour on the queues, keeps KMS requests (and their cost) small at
//! month-end rates.
//!
//! What a new AWS account does to the template (required choices instead
//! of defaults it cannot create, no reserved concurrency, trust and key
//! policies in the form AWS documents, ...) is pinned by
//! `bems-template/tests/fresh_account.rs`, one test per finding, and written up
//! in `infra/README.md`.

use std::collections::BTreeMap;

use bems_core::Stage;
use bems_core::routing::CellSpec;
use serde_json::{Value, json};

mod alarms;
pub mod api;
mod dashboard;
pub mod database;
mod emulator;
mod functions;
mod ingress;
mod policy;
mod routing;
mod security;
mod timestream;

pub use emulator::{AWS_ONLY_TYPES, emulator_template};
pub use security::{guard_rules, security_template};

use alarms::monitoring;
use dashboard::dashboard;
use functions::{functions, source_concurrency};
use ingress::api;
use routing::{cell_key, dlq, fifo_queue, queue, queue_policy, rules_may, rules_stack, standard_dlq, target};
use timestream::timestream;

/// Deploy-time settings with their defaults; they become the template's
/// parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateDefaults {
    /// The functions' `CodeUri`: the BEMS workspace, relative to the
    /// directory the template files are written to (`sam build` compiles
    /// the `bems-lambda` binaries from there with cargo-lambda).
    pub code_uri: String,
    /// Receives before a message moves to its DLQ.
    pub max_receive_count: u32,
    /// Visibility timeout of the stage and status queues, seconds (six times
    /// the functions' timeout, as AWS advises).
    pub visibility_timeout_secs: u32,
    /// Days the archive keeps events (0: forever).
    pub archive_retention_days: u32,
    /// Every event visible within this many seconds (the SLA).
    pub sla_secs: u32,
    /// Messages waiting in a stage or status queue above which operations
    /// are warned.
    pub queue_depth_threshold: u32,
    /// Age of a queue's oldest message, seconds, above which operations are
    /// warned (the SLA itself is the critical threshold).
    pub queue_age_warning_secs: u32,
    /// Days logs are kept.
    pub log_retention_days: u32,
    /// Percentage of a stage's records failing above which operations are
    /// warned.
    pub error_rate_percent: u32,
    /// Timestream memory store retention, hours.
    pub memory_retention_hours: u32,
    /// Timestream magnetic store retention, days (auditors keep history).
    pub magnetic_retention_days: u32,
}

impl Default for TemplateDefaults {
    fn default() -> TemplateDefaults {
        TemplateDefaults {
            // infra/cells/<cell>/ -> the workspace root.
            code_uri: "../../..".to_owned(),
            max_receive_count: 5,
            visibility_timeout_secs: 180,
            archive_retention_days: 30,
            sla_secs: 120,
            // Ten seconds of the month-end peak (1,000 events/s).
            queue_depth_threshold: 10_000,
            queue_age_warning_secs: 60,
            error_rate_percent: 1,
            log_retention_days: 90,
            memory_retention_hours: 24,
            // Seven years.
            magnetic_retention_days: 2_555,
        }
    }
}

/// A cell's template files: name and content.
#[derive(Debug, Clone, PartialEq)]
pub struct CellTemplate {
    /// `cell.json`, `rules-<stage>.json` per stage, then the optional
    /// `security.json`.
    pub files: Vec<(String, Value)>,
}

impl CellTemplate {
    /// The file named `name`.
    pub fn file(&self, name: &str) -> Option<&Value> {
        self.files.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// Each file as the text written to disk: pretty JSON, keys sorted, a
    /// final newline.
    pub fn texts(&self) -> Vec<(String, String)> {
        self.files
            .iter()
            .map(|(name, value)| {
                let mut text = serde_json::to_string_pretty(&sorted(value)).unwrap_or_default();
                text.push('\n');
                (name.clone(), text)
            })
            .collect()
    }
}

/// `value` with every object's keys in sorted order, whatever
/// `serde_json::Map` is (with the `preserve_order` feature, which any crate
/// in a build can switch on, it keeps insertion order).
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k.clone(), sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// The nested rules file of `stage`.
pub fn rules_file_name(stage: Stage) -> String {
    format!("rules-{stage}.json")
}

/// `text` with its first letter in upper case.
fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| first.to_uppercase().chain(chars).collect())
}

/// A function's logical id: `IngestionProcessor`, `RouteForwarder`,
/// `StatusWriter`; a function's role is `<id>Role`, its log group `<id>Logs`.
fn function_logical_id(function: bems_core::contract::Function) -> String {
    use bems_core::contract::Function;
    match function {
        Function::Processor(stage) => format!("{}Processor", pascal(stage)),
        Function::RouteForwarder => "RouteForwarder".to_owned(),
        // Either store's writer, in the alarms' ids (the functions
        // themselves are `PostgresWriter` and `TimestreamWriter`).
        Function::StatusWriter => "StatusWriter".to_owned(),
    }
}

/// A logical id part from a stage: `Ingestion`.
fn pascal(stage: Stage) -> String {
    capitalized(stage.as_str())
}

fn sub(text: &str) -> Value {
    json!({ "Fn::Sub": text })
}

fn get_att(resource: &str, attribute: &str) -> Value {
    json!({ "Fn::GetAtt": [resource, attribute] })
}

fn reference(name: &str) -> Value {
    json!({ "Ref": name })
}

/// What the request models fix, as the stack sees it: the cell's Region
/// and account are the stack's own.
fn model_cell(spec: &CellSpec) -> crate::api::ModelCell {
    crate::api::ModelCell {
        cell_id: spec.cell_id().as_str().to_owned(),
        partitions: spec.partitions().get(),
        region: reference("AWS::Region"),
        account_id: reference("AWS::AccountId"),
    }
}

/// `resource`, kept when the stack is deleted or the resource replaced:
/// what holds events or the means to read them (the cell key, the archive,
/// dead-letter queues, logs) must outlive a mistaken `sam delete`.
fn retained(mut resource: Value) -> Value {
    resource["DeletionPolicy"] = json!("Retain");
    resource["UpdateReplacePolicy"] = json!("Retain");
    resource
}

/// A customer managed key that rotates yearly: the account administers it
/// (and grants use through IAM), `services` are the statements that let
/// AWS services use it.
fn rotating_key(description: &str, services: Value) -> Value {
    let mut statements = vec![json!({
        "Sid": "account-administers",
        "Effect": "Allow",
        "Principal": { "AWS": sub("arn:${AWS::Partition}:iam::${AWS::AccountId}:root") },
        "Action": "kms:*",
        "Resource": "*",
    })];
    if let Value::Array(services) = services {
        statements.extend(services);
    }
    json!({
        "Type": "AWS::KMS::Key",
        "Properties": {
            "Description": description,
            "EnableKeyRotation": true,
            "KeyPolicy": { "Version": "2012-10-17", "Statement": statements },
        },
    })
}

/// The template files of `spec`'s cell.
pub fn cell_template(spec: &CellSpec, defaults: &TemplateDefaults) -> CellTemplate {
    let mut files = vec![("cell.json".to_owned(), main_stack(spec, defaults))];
    for stage in Stage::ALL {
        files.push((rules_file_name(stage), rules_stack(spec, stage)));
    }
    files.push(("security.json".to_owned(), security_template(spec)));
    CellTemplate { files }
}

fn main_stack(spec: &CellSpec, defaults: &TemplateDefaults) -> Value {
    let cell = spec.cell_id().as_str();
    let mut resources: BTreeMap<String, Value> = BTreeMap::new();
    let mut outputs: BTreeMap<String, Value> = BTreeMap::new();

    resources
        .insert("Bus".into(), json!({ "Type": "AWS::Events::EventBus", "Properties": { "Name": spec.bus_name() } }));
    resources.insert(
        "Archive".into(),
        retained(json!({
            "Type": "AWS::Events::Archive",
            "Properties": {
                "ArchiveName": spec.archive_name(),
                "SourceArn": get_att("Bus", "Arn"),
                "EventPattern": { "source": [bems_core::envelope::EVENT_SOURCE] },
                "RetentionDays": reference("ArchiveRetentionDays"),
            },
        })),
    );
    resources.insert("BusDlq".into(), standard_dlq(cell, &spec.bus_dlq_name()));
    let rules_arn =
        format!("arn:${{AWS::Partition}}:events:${{AWS::Region}}:${{AWS::AccountId}}:rule/{}/*", spec.bus_name());
    resources.insert(
        "BusDlqPolicy".into(),
        json!({
            "Type": "AWS::SQS::QueuePolicy",
            "Properties": {
                "Queues": [reference("BusDlq")],
                "PolicyDocument": rules_may("sqs:SendMessage", &get_att("BusDlq", "Arn"), &rules_arn),
            },
        }),
    );
    // Events of our source that no stage rule takes (see
    // `CellSpec::unrouted_pattern`): kept in a queue with an alarm.
    resources.insert("UnroutedQueue".into(), standard_dlq(cell, &spec.unrouted_queue_name()));
    resources.insert(
        "UnroutedQueuePolicy".into(),
        json!({
            "Type": "AWS::SQS::QueuePolicy",
            "Properties": {
                "Queues": [reference("UnroutedQueue")],
                "PolicyDocument": rules_may("sqs:SendMessage", &get_att("UnroutedQueue", "Arn"), &rules_arn),
            },
        }),
    );
    resources.insert(
        "UnroutedRule".into(),
        json!({
            "Type": "AWS::Events::Rule",
            "DependsOn": ["UnroutedQueuePolicy", "BusDlqPolicy"],
            "Properties": {
                "Name": spec.unrouted_rule_name(),
                "Description": "Events of the cell's source that no stage rule routes (a partition outside 1..P, another cell, a missing field): kept for an operator.",
                "EventBusName": reference("Bus"),
                "EventPattern": spec.unrouted_pattern().to_value(),
                "State": "ENABLED",
                "Targets": [target(&get_att("UnroutedQueue", "Arn"), None, &get_att("BusDlq", "Arn"))],
            },
        }),
    );
    resources.insert("CellKey".into(), retained(cell_key()));
    resources.insert(
        "CellKeyAlias".into(),
        json!({
            "Type": "AWS::KMS::Alias",
            "Properties": { "AliasName": spec.key_alias(), "TargetKeyId": reference("CellKey") },
        }),
    );

    resources.insert("StatusDlq".into(), dlq(cell, &spec.status_dlq_name()));
    let mut status_queue = queue(cell, &spec.status_queue_name(), "StatusDlq");
    // Without a store, the status changes wait for a consumer of the user's
    // own: as long as SQS keeps anything, not its default four days.
    status_queue["Properties"]["MessageRetentionPeriod"] =
        json!({ "Fn::If": ["WithStore", { "Ref": "AWS::NoValue" }, 1_209_600] });
    resources.insert("StatusQueue".into(), status_queue);
    let topics: Vec<Value> = Stage::ALL.iter().map(|s| reference(&format!("{}Topic", pascal(*s)))).collect();
    resources.insert("StatusQueuePolicy".into(), queue_policy("StatusQueue", &topics));
    // Smoke-test invoices only (`bems smoke` reads it): no DLQ, no alarm,
    // an hour's retention.
    resources.insert(
        "SmokeQueue".into(),
        fifo_queue(
            &spec.smoke_queue_name(),
            json!({
                "MessageRetentionPeriod": bems_core::contract::SMOKE_RETENTION_SECS,
                "Tags": routing::queue_tags(cell, "smoke"),
            }),
        ),
    );
    resources.insert("SmokeQueuePolicy".into(), queue_policy("SmokeQueue", &topics));

    for stage in Stage::ALL {
        let p = pascal(stage);
        let (topic, queue_id, dlq_id) = (format!("{p}Topic"), format!("{p}Queue"), format!("{p}Dlq"));
        resources.insert(
            topic.clone(),
            json!({
                "Type": "AWS::SNS::Topic",
                "Properties": {
                    "TopicName": spec.topic_name(stage),
                    "FifoTopic": true,
                    "ContentBasedDeduplication": true,
                    // Throughput quota and deduplication per message group
                    // (partition), as for the queues.
                    "FifoThroughputScope": "MessageGroup",
                    "KmsMasterKeyId": reference("CellKey"),
                },
            }),
        );
        // The rules' target: only this cell's rules may send to it.
        let (route, route_dlq) = (format!("{p}Route"), format!("{p}RouteDlq"));
        resources.insert(route_dlq.clone(), dlq(cell, &spec.route_dlq_name(stage)));
        resources.insert(route.clone(), queue(cell, &spec.route_queue_name(stage), &route_dlq));
        resources.insert(
            format!("{p}RoutePolicy"),
            json!({
                "Type": "AWS::SQS::QueuePolicy",
                "Properties": {
                    "Queues": [reference(&route)],
                    "PolicyDocument": rules_may("sqs:SendMessage", &get_att(&route, "Arn"), &rules_arn),
                },
            }),
        );
        resources.insert(dlq_id.clone(), dlq(cell, &spec.dlq_name(stage)));
        resources.insert(queue_id.clone(), queue(cell, &spec.queue_name(stage), &dlq_id));
        resources.insert(format!("{p}QueuePolicy"), queue_policy(&queue_id, &[reference(&topic)]));
        let filter = spec.stage_filter_policy();
        resources.insert(
            format!("{p}Subscription"),
            json!({
                "Type": "AWS::SNS::Subscription",
                "Properties": {
                    "TopicArn": reference(&topic),
                    "Protocol": "sqs",
                    "Endpoint": get_att(&queue_id, "Arn"),
                    "RawMessageDelivery": true,
                    "FilterPolicyScope": filter.scope().as_str(),
                    "FilterPolicy": filter.to_value(),
                },
            }),
        );
        resources.insert(
            format!("{p}StatusSubscription"),
            json!({
                "Type": "AWS::SNS::Subscription",
                "Properties": {
                    "TopicArn": reference(&topic),
                    "Protocol": "sqs",
                    "Endpoint": get_att("StatusQueue", "Arn"),
                    "RawMessageDelivery": true,
                },
            }),
        );
        let smoke = spec.smoke_filter_policy();
        resources.insert(
            format!("{p}SmokeSubscription"),
            json!({
                "Type": "AWS::SNS::Subscription",
                "Properties": {
                    "TopicArn": reference(&topic),
                    "Protocol": "sqs",
                    "Endpoint": get_att("SmokeQueue", "Arn"),
                    "RawMessageDelivery": true,
                    "FilterPolicyScope": smoke.scope().as_str(),
                    "FilterPolicy": smoke.to_value(),
                },
            }),
        );
        resources.insert(
            format!("{p}Rules"),
            json!({
                "Type": "AWS::CloudFormation::Stack",
                "DependsOn": [format!("{p}RoutePolicy"), "BusDlqPolicy"],
                "Properties": {
                    "TemplateURL": rules_file_name(stage),
                    "Parameters": {
                        "BusName": reference("Bus"),
                        "RouteQueueArn": get_att(&route, "Arn"),
                        "DeadLetterQueueArn": get_att("BusDlq", "Arn"),
                    },
                },
            }),
        );
        outputs.insert(format!("{p}TopicArn"), json!({ "Value": reference(&topic) }));
        outputs.insert(format!("{p}QueueUrl"), json!({ "Value": reference(&queue_id) }));
        outputs.insert(format!("{p}DlqUrl"), json!({ "Value": reference(&dlq_id) }));
        outputs.insert(format!("{p}RouteQueueUrl"), json!({ "Value": reference(&route) }));
        outputs.insert(format!("{p}RouteDlqUrl"), json!({ "Value": reference(&route_dlq) }));
    }
    api(spec, &mut resources, &mut outputs);
    functions(spec, defaults, &mut resources);
    monitoring(spec, &mut resources, &mut outputs);
    resources.insert("Dashboard".into(), dashboard(spec));
    timestream(spec, &mut resources, &mut outputs);
    database::database(spec, defaults, &mut resources, &mut outputs);
    outputs.insert("BusName".into(), json!({ "Value": reference("Bus") }));
    outputs.insert("BusArn".into(), json!({ "Value": get_att("Bus", "Arn") }));
    outputs.insert("BusDlqUrl".into(), json!({ "Value": reference("BusDlq") }));
    outputs.insert("StatusQueueUrl".into(), json!({ "Value": reference("StatusQueue") }));
    outputs.insert("StatusDlqUrl".into(), json!({ "Value": reference("StatusDlq") }));
    outputs.insert("UnroutedQueueUrl".into(), json!({ "Value": reference("UnroutedQueue") }));
    outputs.insert("SmokeQueueUrl".into(), json!({ "Value": reference("SmokeQueue") }));

    let mut template = json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Transform": "AWS::Serverless-2016-10-31",
        "Description": format!(
            "BEMS cell {cell}: {} partitions. Generated by `bems template` from the cell's CellSpec; do not edit.",
            spec.partitions().get()
        ),
        "Metadata": {
            "Bems": { "cellId": cell, "partitions": spec.partitions().get() },
            // The nested stacks' TemplateURLs are local file names, which
            // `sam deploy` (or `aws cloudformation package`) uploads and
            // rewrites: exactly what W3002 warns about. W1030: VpcId,
            // SubnetIds and DatabaseSecurityGroupId default to empty and
            // are used only under the conditions whose Rules require them
            // (cfn-lint checks the empty defaults against the id patterns;
            // the warning cannot be suppressed on a SAM function alone).
            "cfn-lint": { "config": { "ignore_checks": ["W3002", "W1030"] } },
        },
        "Parameters": {
            "MaxReceiveCount": {
                "Type": "Number",
                "Default": defaults.max_receive_count,
                "MinValue": 1,
                "MaxValue": 1000,
                "Description": "Receives before a message moves to its dead-letter queue.",
            },
            "VisibilityTimeoutSeconds": {
                "Type": "Number",
                "Default": defaults.visibility_timeout_secs,
                "MinValue": 0,
                "MaxValue": 43_200,
                "Description": "Visibility timeout of the stage and status queues: six times the functions' timeout.",
            },
            "ArchiveRetentionDays": {
                "Type": "Number",
                "Default": defaults.archive_retention_days,
                "MinValue": 0,
                "Description": "Days the archive keeps events for replay (0: forever).",
            },
            "SlaSeconds": {
                "Type": "Number",
                "Default": defaults.sla_secs,
                "MinValue": 1,
                "Description": "Every event must be visible within this many seconds; the critical alarms use it.",
            },
            "QueueDepthThreshold": {
                "Type": "Number",
                "Default": defaults.queue_depth_threshold,
                "MinValue": 1,
                "Description": "Messages waiting in a stage or status queue above which operations are warned.",
            },
            "QueueAgeWarningSeconds": {
                "Type": "Number",
                "Default": defaults.queue_age_warning_secs,
                "MinValue": 1,
                "Description": "Age of a queue's oldest message above which operations are warned.",
            },
            "LogRetentionDays": {
                "Type": "Number",
                "Default": defaults.log_retention_days,
                "AllowedValues": [1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653],
                "Description": "Days the API access logs (and, with the functions, their logs) are kept.",
            },
            "ConfigureApiGatewayAccount": {
                "Type": "String",
                "AllowedValues": ["true", "false"],
                "Description": "Region-wide, shared by every API of the account in this Region: true makes this stack set API Gateway's CloudWatch Logs role (needed before a stage may log); false when another stack or an administrator already set it (check: aws apigateway get-account). Deleting the stack does not unset it.",
            },
            "ProcessorMaximumConcurrency": {
                "Type": "Number",
                "Default": source_concurrency(u32::from(spec.partitions().get())),
                "MinValue": functions::MIN_SOURCE_CONCURRENCY,
                "MaxValue": functions::MAX_SOURCE_CONCURRENCY,
                "Description": "Concurrent batches each stage processor's event source may run. A FIFO queue runs one batch per message group (partition) at a time, so the partition count saturates it.",
            },
            "ForwarderMaximumConcurrency": {
                "Type": "Number",
                "Default": source_concurrency(u32::from(spec.partitions().get())),
                "MinValue": functions::MIN_SOURCE_CONCURRENCY,
                "MaxValue": functions::MAX_SOURCE_CONCURRENCY,
                "Description": "Concurrent batches each of the route forwarder's four event sources (one per route queue, P message groups each) may run.",
            },
            "WriterMaximumConcurrency": {
                "Type": "Number",
                "Default": source_concurrency(4 * u32::from(spec.partitions().get())),
                "MinValue": functions::MIN_SOURCE_CONCURRENCY,
                "MaxValue": functions::MAX_SOURCE_CONCURRENCY,
                "Description": "Concurrent batches the status writer's event source may run: the status queue has one message group per stage and partition (4 x P).",
            },
            "IdempotencyTable": {
                "Type": "String",
                "Default": "",
                "Description": "Optional DynamoDB table (key eventId, TTL expiresAt) for the processors' durable idempotency; empty: FIFO deduplication only (see docs/batch-processing.md, Idempotency, for the cost).",
            },
            "Api5xxRatePercent": {
                "Type": "Number",
                "Default": 1,
                "MinValue": 0,
                "MaxValue": 100,
                "Description": "Share of API requests failing with a 5xx above which the critical alarm fires (3 of 5 minutes).",
            },
            "Api4xxRatePercent": {
                "Type": "Number",
                "Default": 5,
                "MinValue": 0,
                "MaxValue": 100,
                "Description": "Share of API requests refused with a 4xx above which operations are warned (5 minutes).",
            },
            "ErrorRatePercent": {
                "Type": "Number",
                "Default": defaults.error_rate_percent,
                "MinValue": 0,
                "MaxValue": 100,
                "Description": "Share of a stage's records failing (any class) above which operations are warned, over 5 minutes.",
            },
            "AlertEmail": {
                "Type": "String",
                "Default": "",
                "Description": "Where alerts are mailed (both severities); empty: subscribe to the alert topics yourself.",
            },
            "Store": {
                "Type": "String",
                "AllowedValues": ["aurora", "existing", "timestream", "none"],
                "Description": "Where status changes are stored. aurora: an Aurora PostgreSQL Serverless v2 cluster of the cell's (DatabaseNetwork, Aurora* parameters). existing: your RDS or Aurora PostgreSQL (Database* parameters, VpcId, SubnetIds). timestream: Timestream for LiveAnalytics, only for accounts that already use it (closed to new customers since 2025-06-20). none: no store and no status writer; the status-change queue keeps every status change 14 days for a consumer of your own (its age and depth alarms warn; they page only with a store).",
            },
            "MemoryRetentionHours": {
                "Type": "Number",
                "Default": defaults.memory_retention_hours,
                "MinValue": 1,
                "MaxValue": 8_766,
                "Description": "Timestream memory store retention (hours): recent data, fast queries, where writes land.",
            },
            "MagneticRetentionDays": {
                "Type": "Number",
                "Default": defaults.magnetic_retention_days,
                "MinValue": 1,
                "MaxValue": 73_000,
                "Description": "Timestream magnetic store retention (days): the auditors' full history.",
            },
        },
        "Conditions": {
            "HasAlertEmail": { "Fn::Not": [{ "Fn::Equals": [reference("AlertEmail"), ""] }] },
            "WithApiGatewayAccount": { "Fn::Equals": [reference("ConfigureApiGatewayAccount"), "true"] },
            "WithIdempotencyTable": { "Fn::Not": [{ "Fn::Equals": [reference("IdempotencyTable"), ""] }] },
        },
        "Rules": database::rules(),
        "Resources": resources,
        "Outputs": outputs,
    });
    // The store's parameters and conditions beside the rest.
    for (section, more) in [("Parameters", database::parameters()), ("Conditions", database::conditions())] {
        if let (Some(into), Value::Object(more)) = (template[section].as_object_mut(), more) {
            into.extend(more);
        }
    }
    template
}
