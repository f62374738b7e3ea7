//! The cell's CloudFormation template, generated from its [`CellSpec`].
//!
//! The rules, filter policies and names deployed on AWS come from the same
//! code the tests exercise, so they cannot drift: `bems template` writes the
//! files, and a test regenerates the committed example and compares it byte
//! for byte (see `infra/README.md`).
//!
//! Files, for a cell `C`:
//!
//! - `cell.json`: the main stack: bus, archive, bus DLQ, the cell's customer
//!   managed KMS key (topics and queues), per stage the SNS FIFO topic, its SQS FIFO queue
//!   and DLQ and the filtered subscription, the status-change queue (and
//!   DLQ) subscribed to every topic, the policies that let exactly these
//!   services talk, and one nested stack of rules per stage;
//! - `rules-<stage>.json`: that stage's rule per partition, each with one
//!   target (the stage topic, static message group `<stage>-pNN`, a DLQ and
//!   a retry policy). Nested because 99 partitions make 396 rules and a
//!   stack holds at most 500 resources.
//!
//! Not deployable on AWS yet: a classic EventBridge rule cannot set the
//! message group of an SNS FIFO topic target (it has no `SnsParameters`;
//! the `SqsParameters` set here are documented for SQS FIFO queues only).
//! `infra/README.md` lists the ways out.
//!
//! Why a customer managed key: EventBridge cannot publish to an SNS topic
//! encrypted with the AWS managed key (`alias/aws/sns`), nor SNS send to a
//! queue encrypted with `alias/aws/sqs`: their policies cannot be changed to
//! let the services use them. One key per cell, with a data key reuse period
//! of an hour on the queues, keeps KMS requests (and their cost) small at
//! month-end rates.

use std::collections::BTreeMap;

use bems_core::Stage;
use bems_core::routing::CellSpec;
use serde_json::{Value, json};

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
    /// `cell.json`, then `rules-<stage>.json` per stage.
    pub files: Vec<(String, Value)>,
}

impl CellTemplate {
    /// The file named `name`.
    pub fn file(&self, name: &str) -> Option<&Value> {
        self.files.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// Each file as the text written to disk: pretty JSON, keys sorted (the
    /// maps are ordered), a final newline.
    pub fn texts(&self) -> Vec<(String, String)> {
        self.files
            .iter()
            .map(|(name, value)| {
                let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
                text.push('\n');
                (name.clone(), text)
            })
            .collect()
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

/// The template files of `spec`'s cell.
pub fn cell_template(spec: &CellSpec, defaults: &TemplateDefaults) -> CellTemplate {
    let mut files = vec![("cell.json".to_owned(), main_stack(spec, defaults))];
    for stage in Stage::ALL {
        files.push((rules_file_name(stage), rules_stack(spec, stage)));
    }
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
        json!({
            "Type": "AWS::Events::Archive",
            "Properties": {
                "ArchiveName": spec.archive_name(),
                "SourceArn": get_att("Bus", "Arn"),
                "EventPattern": { "source": [bems_core::envelope::EVENT_SOURCE] },
                "RetentionDays": reference("ArchiveRetentionDays"),
            },
        }),
    );
    resources.insert(
        "BusDlq".into(),
        json!({
            "Type": "AWS::SQS::Queue",
            "Properties": {
                "QueueName": format!("bems-{cell}-bus-dlq"),
                "KmsMasterKeyId": reference("CellKey"),
                "KmsDataKeyReusePeriodSeconds": 3600,
                "MessageRetentionPeriod": 1_209_600,
            },
        }),
    );
    let rules_arn =
        format!("arn:${{AWS::Partition}}:events:${{AWS::Region}}:${{AWS::AccountId}}:rule/{}/*", spec.bus_name());
    resources.insert(
        "BusDlqPolicy".into(),
        json!({
            "Type": "AWS::SQS::QueuePolicy",
            "Properties": {
                "Queues": [reference("BusDlq")],
                "PolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [{
                        "Sid": "bems-rules",
                        "Effect": "Allow",
                        "Principal": { "Service": "events.amazonaws.com" },
                        "Action": "sqs:SendMessage",
                        "Resource": get_att("BusDlq", "Arn"),
                        "Condition": { "ArnLike": { "aws:SourceArn": sub(&rules_arn) } },
                    }],
                },
            },
        }),
    );
    resources.insert("CellKey".into(), cell_key(&rules_arn));
    resources.insert(
        "CellKeyAlias".into(),
        json!({
            "Type": "AWS::KMS::Alias",
            "Properties": { "AliasName": format!("alias/bems-{cell}"), "TargetKeyId": reference("CellKey") },
        }),
    );

    resources.insert("StatusDlq".into(), dlq(&spec.status_dlq_name()));
    resources.insert("StatusQueue".into(), queue(&spec.status_queue_name(), "StatusDlq"));
    let topics: Vec<Value> = Stage::ALL.iter().map(|s| reference(&format!("{}Topic", pascal(*s)))).collect();
    resources.insert("StatusQueuePolicy".into(), queue_policy("StatusQueue", &topics));

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
                    "KmsMasterKeyId": reference("CellKey"),
                },
            }),
        );
        resources.insert(
            format!("{p}TopicPolicy"),
            json!({
                "Type": "AWS::SNS::TopicPolicy",
                "Properties": {
                    "Topics": [reference(&topic)],
                    "PolicyDocument": {
                        "Version": "2012-10-17",
                        "Statement": [{
                            "Sid": "bems-rules",
                            "Effect": "Allow",
                            "Principal": { "Service": "events.amazonaws.com" },
                            "Action": "sns:Publish",
                            "Resource": reference(&topic),
                            "Condition": { "ArnLike": { "aws:SourceArn": sub(&rules_arn) } },
                        }],
                    },
                },
            }),
        );
        resources.insert(dlq_id.clone(), dlq(&spec.dlq_name(stage)));
        resources.insert(queue_id.clone(), queue(&spec.queue_name(stage), &dlq_id));
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
        resources.insert(
            format!("{p}Rules"),
            json!({
                "Type": "AWS::CloudFormation::Stack",
                "DependsOn": [format!("{p}TopicPolicy"), "BusDlqPolicy"],
                "Properties": {
                    "TemplateURL": rules_file_name(stage),
                    "Parameters": {
                        "BusName": reference("Bus"),
                        "TopicArn": reference(&topic),
                        "DeadLetterQueueArn": get_att("BusDlq", "Arn"),
                    },
                },
            }),
        );
        outputs.insert(format!("{p}TopicArn"), json!({ "Value": reference(&topic) }));
        outputs.insert(format!("{p}QueueUrl"), json!({ "Value": reference(&queue_id) }));
        outputs.insert(format!("{p}DlqUrl"), json!({ "Value": reference(&dlq_id) }));
    }
    api(spec, &mut resources, &mut outputs);
    functions(spec, defaults, &mut resources);
    monitoring(spec, &mut resources, &mut outputs);
    resources.insert("Dashboard".into(), dashboard(spec));
    timestream(spec, &mut resources, &mut outputs);
    outputs.insert("BusName".into(), json!({ "Value": reference("Bus") }));
    outputs.insert("BusArn".into(), json!({ "Value": get_att("Bus", "Arn") }));
    outputs.insert("BusDlqUrl".into(), json!({ "Value": reference("BusDlq") }));
    outputs.insert("StatusQueueUrl".into(), json!({ "Value": reference("StatusQueue") }));
    outputs.insert("StatusDlqUrl".into(), json!({ "Value": reference("StatusDlq") }));

    json!({
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
            // rewrites: exactly what W3002 warns about.
            "cfn-lint": { "config": { "ignore_checks": ["W3002"] } },
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
                "Default": "true",
                "AllowedValues": ["true", "false"],
                "Description": "Set the account's API Gateway CloudWatch role (one per account and Region; false when another stack already does).",
            },
            "ProcessorReservedConcurrency": {
                "Type": "Number",
                "Default": spec.partitions().get(),
                "MinValue": 1,
                "Description": "Reserved concurrency of each stage processor. A FIFO queue runs at most one batch per message group (partition) at a time, so more than the partition count is never used.",
            },
            "WriterReservedConcurrency": {
                "Type": "Number",
                "Default": spec.partitions().get(),
                "MinValue": 1,
                "Description": "Reserved concurrency of the Timestream writer.",
            },
            "IdempotencyTable": {
                "Type": "String",
                "Default": "",
                "Description": "Optional DynamoDB table (key eventId, TTL expiresAt) for the processors' durable idempotency; empty: FIFO deduplication only (see the README's Idempotency section for the cost).",
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
            "CreateTimestream": {
                "Type": "String",
                "Default": "true",
                "AllowedValues": ["true", "false"],
                "Description": "false for accounts that cannot create Timestream for LiveAnalytics (closed to new customers since 2025-06-20); bring another RecordSink.",
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
            "WithTimestream": { "Fn::Equals": [reference("CreateTimestream"), "true"] },
            "WithApiGatewayAccount": { "Fn::Equals": [reference("ConfigureApiGatewayAccount"), "true"] },
            "WithIdempotencyTable": { "Fn::Not": [{ "Fn::Equals": [reference("IdempotencyTable"), ""] }] },
        },
        "Resources": resources,
        "Outputs": outputs,
    })
}

/// The part of the cell LocalStack can deploy, as one template, for the
/// end-to-end test of the template itself: the AWS `cell.json` less what
/// LocalStack lacks or cannot run (functions: no Docker; Timestream, WAF,
/// the archive: no provider; alarms, dashboard, access logs: not needed to
/// route an event), with the rules inline (LocalStack has no 500-resource
/// limit) and delivering through the emulator shim's SQS FIFO queues
/// (LocalStack cannot deliver to an SNS FIFO topic; see
/// [`crate::shim`]), and the API's emulator models and request template
/// ([`crate::api`]).
pub fn localstack_template(spec: &CellSpec, defaults: &TemplateDefaults) -> Value {
    let mut template = main_stack(spec, defaults);
    let Some(root) = template.as_object_mut() else { return template };
    root.remove("Transform");
    if let Some(Value::Object(resources)) = root.get_mut("Resources") {
        let dropped = [
            "AWS::Serverless::Function",
            "AWS::Logs::LogGroup",
            "AWS::Timestream::Database",
            "AWS::Timestream::Table",
            "AWS::WAFv2::WebACL",
            "AWS::WAFv2::WebACLAssociation",
            "AWS::Events::Archive",
            "AWS::CloudWatch::Alarm",
            "AWS::CloudWatch::CompositeAlarm",
            "AWS::CloudWatch::Dashboard",
            "AWS::CloudFormation::Stack",
            "AWS::ApiGateway::Account",
        ];
        resources.retain(|id, r| {
            !dropped.iter().any(|t| r["Type"] == *t) && !id.starts_with("Alerts") && id != "ApiGatewayLogsRole"
        });
        if let Some(stage) = resources.get_mut("ApiStage").and_then(|r| r["Properties"].as_object_mut()) {
            stage.remove("AccessLogSetting");
        }
        for stage in Stage::ALL {
            let p = pascal(stage);
            if let Ok(schema) = crate::api::model(stage, true) {
                resources[&format!("{p}Model")]["Properties"]["Schema"] = schema;
            }
            resources[&format!("{p}Method")]["Properties"]["Integration"]["RequestTemplates"]["application/json"] =
                Value::String(crate::api::request_template(spec, true));
            let shim = format!("{p}Shim");
            resources.insert(
                shim.clone(),
                json!({
                    "Type": "AWS::SQS::Queue",
                    "Properties": {
                        "QueueName": crate::provision::shim_queue_name(spec, stage),
                        "FifoQueue": true,
                        "ContentBasedDeduplication": true,
                    },
                }),
            );
            for rule in spec.stage_rules().into_iter().filter(|r| r.stage == stage) {
                resources.insert(
                    format!("Rule{p}P{:02}", rule.partition.get()),
                    json!({
                        "Type": "AWS::Events::Rule",
                        "Properties": {
                            "Name": rule.name,
                            "EventBusName": reference("Bus"),
                            "EventPattern": rule.pattern.to_value(),
                            "State": "ENABLED",
                            "Targets": [{
                                "Id": "shim",
                                "Arn": get_att(&shim, "Arn"),
                                "SqsParameters": { "MessageGroupId": rule.message_group_id },
                                "DeadLetterConfig": { "Arn": get_att("BusDlq", "Arn") },
                            }],
                        },
                    }),
                );
            }
        }
    }
    if let Some(Value::Object(outputs)) = root.get_mut("Outputs") {
        outputs.retain(|id, _| !id.starts_with("Alerts") && id != "TimestreamDatabase");
    }
    template
}

/// The ingress: `POST /invoices/<stage>` with the stage's draft-04 model and
/// a body validator, an API key and usage plan, the PutEvents integration
/// (through a role that may put events on this bus only), JSON gateway
/// responses, stage throttling, access logs (encrypted, kept
/// `LogRetentionDays`), X-Ray, and a WAF web ACL with AWS's common and
/// known-bad-inputs rule sets. The same tables as `bems provision`
/// ([`crate::api`]) so both deploy the same API.
fn api(spec: &CellSpec, resources: &mut BTreeMap<String, Value>, outputs: &mut BTreeMap<String, Value>) {
    use crate::api::{
        BURST_LIMIT, BUS_ERROR_BODY, GATEWAY_RESPONSES, METHOD_STATUSES, RATE_LIMIT, RESPONSE_TEMPLATE, STAGE_NAME,
        model, model_name, request_template,
    };
    let cell = spec.cell_id().as_str();
    let api = reference("Api");
    resources.insert(
        "Api".into(),
        json!({
            "Type": "AWS::ApiGateway::RestApi",
            "Properties": {
                "Name": format!("bems-{cell}-ingress"),
                "Description": "BEMS ingress: POST /invoices/<stage> puts a validated invoice event on the cell's bus.",
                "EndpointConfiguration": { "Types": ["REGIONAL"] },
            },
        }),
    );
    resources.insert(
        "ApiRole".into(),
        json!({
            "Type": "AWS::IAM::Role",
            "Properties": {
                "Description": "API Gateway puts events on this cell's bus, and nothing else.",
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [{
                        "Effect": "Allow",
                        "Principal": { "Service": "apigateway.amazonaws.com" },
                        "Action": "sts:AssumeRole",
                        "Condition": { "StringEquals": { "aws:SourceAccount": sub("${AWS::AccountId}") } },
                    }],
                },
                "Policies": [{
                    "PolicyName": "put-events",
                    "PolicyDocument": {
                        "Version": "2012-10-17",
                        "Statement": [{ "Effect": "Allow", "Action": "events:PutEvents", "Resource": get_att("Bus", "Arn") }],
                    },
                }],
            },
        }),
    );
    resources.insert(
        "InvoicesResource".into(),
        json!({
            "Type": "AWS::ApiGateway::Resource",
            "Properties": { "RestApiId": api, "ParentId": get_att("Api", "RootResourceId"), "PathPart": "invoices" },
        }),
    );
    resources.insert(
        "BodyValidator".into(),
        json!({
            "Type": "AWS::ApiGateway::RequestValidator",
            "Properties": { "RestApiId": api, "Name": "body", "ValidateRequestBody": true, "ValidateRequestParameters": false },
        }),
    );
    let mut methods = Vec::new();
    for stage in Stage::ALL {
        let p = pascal(stage);
        // The generated schemas are fixed data; a failure is a bug in bems-schema.
        let schema = model(stage, false).unwrap_or_else(|e| unreachable!("the {stage} model generates: {e}"));
        resources.insert(
            format!("{p}Model"),
            json!({
                "Type": "AWS::ApiGateway::Model",
                "Properties": { "RestApiId": api, "Name": model_name(stage), "ContentType": "application/json", "Schema": schema },
            }),
        );
        resources.insert(
            format!("{p}Resource"),
            json!({
                "Type": "AWS::ApiGateway::Resource",
                "Properties": { "RestApiId": api, "ParentId": reference("InvoicesResource"), "PathPart": stage.as_str() },
            }),
        );
        methods.push(format!("{p}Method"));
        resources.insert(
            format!("{p}Method"),
            json!({
                "Type": "AWS::ApiGateway::Method",
                "Properties": {
                    "RestApiId": api,
                    "ResourceId": reference(&format!("{p}Resource")),
                    "HttpMethod": "POST",
                    "AuthorizationType": "NONE",
                    "ApiKeyRequired": true,
                    "RequestValidatorId": reference("BodyValidator"),
                    "RequestModels": { "application/json": reference(&format!("{p}Model")) },
                    "Integration": {
                        "Type": "AWS",
                        "IntegrationHttpMethod": "POST",
                        "Uri": sub("arn:${AWS::Partition}:apigateway:${AWS::Region}:events:action/PutEvents"),
                        "Credentials": get_att("ApiRole", "Arn"),
                        "RequestParameters": {
                            "integration.request.header.X-Amz-Target": "'AWSEvents.PutEvents'",
                            "integration.request.header.Content-Type": "'application/x-amz-json-1.1'",
                        },
                        "RequestTemplates": { "application/json": request_template(spec, false) },
                        "PassthroughBehavior": "NEVER",
                        "IntegrationResponses": [
                            { "StatusCode": "200", "ResponseTemplates": { "application/json": RESPONSE_TEMPLATE } },
                            {
                                "StatusCode": "500",
                                "SelectionPattern": "5\\d{2}",
                                "ResponseTemplates": { "application/json": BUS_ERROR_BODY },
                            },
                        ],
                    },
                    "MethodResponses": METHOD_STATUSES.iter().map(|s| json!({ "StatusCode": s })).collect::<Vec<_>>(),
                },
            }),
        );
    }
    for &(kind, status, body) in GATEWAY_RESPONSES {
        resources.insert(
            format!("GatewayResponse{}", kind.split('_').map(|w| capitalized(&w.to_lowercase())).collect::<String>()),
            json!({
                "Type": "AWS::ApiGateway::GatewayResponse",
                "Properties": {
                    "RestApiId": api,
                    "ResponseType": kind,
                    "StatusCode": status,
                    "ResponseTemplates": { "application/json": body },
                },
            }),
        );
    }
    // The deployment must follow every method; its logical id does not
    // change with them, so a method change needs `aws apigateway
    // create-deployment` (or a new id) to go live: a known CloudFormation
    // trait, written down in infra/README.md.
    resources.insert(
        "Deployment".into(),
        json!({ "Type": "AWS::ApiGateway::Deployment", "DependsOn": methods, "Properties": { "RestApiId": api } }),
    );
    resources.insert(
        "AccessLogs".into(),
        json!({
            "Type": "AWS::Logs::LogGroup",
            "Properties": {
                "LogGroupName": format!("/bems/{cell}/api-access"),
                "RetentionInDays": reference("LogRetentionDays"),
                "KmsKeyId": get_att("CellKey", "Arn"),
            },
        }),
    );
    resources.insert(
        "ApiGatewayLogsRole".into(),
        json!({
            "Type": "AWS::IAM::Role",
            "Condition": "WithApiGatewayAccount",
            "Properties": {
                "Description": "API Gateway writes this account's API logs to CloudWatch Logs.",
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [{
                        "Effect": "Allow",
                        "Principal": { "Service": "apigateway.amazonaws.com" },
                        "Action": "sts:AssumeRole",
                    }],
                },
                "ManagedPolicyArns": [sub("arn:${AWS::Partition}:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs")],
            },
        }),
    );
    resources.insert(
        "ApiGatewayAccount".into(),
        json!({
            "Type": "AWS::ApiGateway::Account",
            "Condition": "WithApiGatewayAccount",
            "Properties": { "CloudWatchRoleArn": get_att("ApiGatewayLogsRole", "Arn") },
        }),
    );
    resources.insert(
        "ApiStage".into(),
        json!({
            "Type": "AWS::ApiGateway::Stage",
            "Metadata": {
                "checkov": { "skip": [{
                    "id": "CKV_AWS_120",
                    "comment": "Every request is a distinct event to put on the bus: a cached answer would drop events.",
                }] },
            },
            "Properties": {
                "RestApiId": api,
                "StageName": STAGE_NAME,
                "DeploymentId": reference("Deployment"),
                "TracingEnabled": true,
                "MethodSettings": [{
                    "ResourcePath": "/*",
                    "HttpMethod": "*",
                    "ThrottlingRateLimit": RATE_LIMIT,
                    "ThrottlingBurstLimit": BURST_LIMIT,
                    "MetricsEnabled": true,
                }],
                "AccessLogSetting": {
                    "DestinationArn": get_att("AccessLogs", "Arn"),
                    "Format": r#"{"requestId":"$context.requestId","ip":"$context.identity.sourceIp","apiKeyId":"$context.identity.apiKeyId","time":"$context.requestTimeEpoch","path":"$context.path","status":"$context.status","error":"$context.error.messageString","validation":"$context.error.validationErrorString","integrationStatus":"$context.integration.status","latencyMs":"$context.responseLatency"}"#,
                },
            },
        }),
    );
    resources.insert(
        "ProducersKey".into(),
        json!({
            "Type": "AWS::ApiGateway::ApiKey",
            "DependsOn": ["ApiStage"],
            "Properties": { "Name": format!("bems-{cell}-producers"), "Enabled": true },
        }),
    );
    resources.insert(
        "UsagePlan".into(),
        json!({
            "Type": "AWS::ApiGateway::UsagePlan",
            "DependsOn": ["ApiStage"],
            "Properties": {
                "UsagePlanName": format!("bems-{cell}-producers"),
                "ApiStages": [{ "ApiId": api, "Stage": STAGE_NAME }],
                "Throttle": { "RateLimit": RATE_LIMIT, "BurstLimit": BURST_LIMIT },
            },
        }),
    );
    resources.insert(
        "UsagePlanKey".into(),
        json!({
            "Type": "AWS::ApiGateway::UsagePlanKey",
            "Properties": { "KeyId": reference("ProducersKey"), "KeyType": "API_KEY", "UsagePlanId": reference("UsagePlan") },
        }),
    );
    let managed = |priority: u32, name: &str| {
        json!({
            "Name": name,
            "Priority": priority,
            "OverrideAction": { "None": {} },
            "Statement": { "ManagedRuleGroupStatement": { "VendorName": "AWS", "Name": name } },
            "VisibilityConfig": { "SampledRequestsEnabled": true, "CloudWatchMetricsEnabled": true, "MetricName": name },
        })
    };
    resources.insert(
        "WebAcl".into(),
        json!({
            "Type": "AWS::WAFv2::WebACL",
            "Properties": {
                "Name": format!("bems-{cell}-ingress"),
                "Scope": "REGIONAL",
                "DefaultAction": { "Allow": {} },
                "Rules": [
                    managed(0, "AWSManagedRulesCommonRuleSet"),
                    managed(1, "AWSManagedRulesKnownBadInputsRuleSet"),
                ],
                "VisibilityConfig": {
                    "SampledRequestsEnabled": true,
                    "CloudWatchMetricsEnabled": true,
                    "MetricName": format!("bems-{cell}-ingress"),
                },
            },
        }),
    );
    resources.insert(
        "WebAclAssociation".into(),
        json!({
            "Type": "AWS::WAFv2::WebACLAssociation",
            "Properties": {
                "ResourceArn": sub(&format!("arn:${{AWS::Partition}}:apigateway:${{AWS::Region}}::/restapis/${{Api}}/stages/{STAGE_NAME}")),
                "WebACLArn": get_att("WebAcl", "Arn"),
            },
            "DependsOn": ["ApiStage"],
        }),
    );
    outputs.insert(
        "ApiUrl".into(),
        json!({ "Value": sub(&format!("https://${{Api}}.execute-api.${{AWS::Region}}.${{AWS::URLSuffix}}/{STAGE_NAME}")) }),
    );
    outputs.insert("ApiId".into(), json!({ "Value": api }));
    outputs.insert("ProducersKeyId".into(), json!({ "Value": reference("ProducersKey") }));
}

/// The five functions (`AWS::Serverless::Function`, arm64, built by
/// cargo-lambda from `bems-lambda`), each with its own role scoped to the
/// resources it touches, its log group (encrypted, kept
/// `LogRetentionDays`), X-Ray, and an SQS event source with
/// `ReportBatchItemFailures`. Timeout 30 s: the queues' visibility timeout
/// (180 s by default) is six times that, as AWS advises.
fn functions(spec: &CellSpec, defaults: &TemplateDefaults, resources: &mut BTreeMap<String, Value>) {
    let cell = spec.cell_id().as_str();
    let sqs_consume = |queue: &str| {
        json!({
            "Effect": "Allow",
            "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes"],
            "Resource": get_att(queue, "Arn"),
        })
    };
    let sqs_send = |queue: &str| json!({ "Effect": "Allow", "Action": ["sqs:SendMessage", "sqs:GetQueueAttributes"], "Resource": get_att(queue, "Arn") });
    let kms = json!({
        "Effect": "Allow",
        "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
        "Resource": get_att("CellKey", "Arn"),
    });
    let suppressions = json!({
        "checkov": { "skip": [
            { "id": "CKV_AWS_116", "comment": "Invoked by an SQS event source: failures go back to the queue and its DLQ; a Lambda DLQ applies to asynchronous invocations only." },
            { "id": "CKV_AWS_117", "comment": "Calls only AWS public endpoints (SQS, EventBridge, Timestream, DynamoDB) with IAM; a VPC would add NAT cost and cold-start time for nothing." },
        ] },
    });
    let mut function = |logical: &str,
                        name: String,
                        binary: &str,
                        queue: &str,
                        dlq: &str,
                        mut statements: Vec<Value>,
                        env: Value,
                        concurrency: &str| {
        statements.extend([sqs_consume(queue), sqs_send(dlq), kms.clone()]);
        resources.insert(
            format!("{logical}Logs"),
            json!({
                "Type": "AWS::Logs::LogGroup",
                "Properties": {
                    "LogGroupName": format!("/aws/lambda/{name}"),
                    "RetentionInDays": reference("LogRetentionDays"),
                    "KmsKeyId": get_att("CellKey", "Arn"),
                },
            }),
        );
        resources.insert(
            logical.to_owned(),
            json!({
                "Type": "AWS::Serverless::Function",
                "DependsOn": [format!("{logical}Logs")],
                "Metadata": {
                    "BuildMethod": "rust-cargolambda",
                    "BuildProperties": { "Binary": binary },
                    "checkov": suppressions["checkov"],
                },
                "Properties": {
                    "FunctionName": name,
                    "CodeUri": defaults.code_uri,
                    "Handler": "bootstrap",
                    "Runtime": "provided.al2023",
                    "Architectures": ["arm64"],
                    "MemorySize": 256,
                    "Timeout": 30,
                    "Tracing": "Active",
                    "KmsKeyArn": get_att("CellKey", "Arn"),
                    "ReservedConcurrentExecutions": reference(concurrency),
                    "Environment": { "Variables": env },
                    "Policies": [{ "Version": "2012-10-17", "Statement": statements }],
                    "Events": {
                        "Queue": {
                            "Type": "SQS",
                            "Properties": {
                                "Queue": get_att(queue, "Arn"),
                                "BatchSize": 10,
                                "FunctionResponseTypes": ["ReportBatchItemFailures"],
                            },
                        },
                    },
                },
            }),
        );
    };
    for stage in Stage::ALL {
        let p = pascal(stage);
        let (queue, dlq) = (format!("{p}Queue"), format!("{p}Dlq"));
        let statements = vec![
            json!({ "Effect": "Allow", "Action": "events:PutEvents", "Resource": get_att("Bus", "Arn") }),
            json!({
                "Fn::If": [
                    "WithIdempotencyTable",
                    {
                        "Effect": "Allow",
                        "Action": ["dynamodb:PutItem", "dynamodb:GetItem"],
                        "Resource": sub("arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:table/${IdempotencyTable}"),
                    },
                    { "Ref": "AWS::NoValue" },
                ],
            }),
        ];
        let env = json!({
            "BEMS_CELL_ID": cell,
            "BEMS_PARTITIONS": spec.partitions().get().to_string(),
            "BEMS_DLQ_URL": reference(&dlq),
            "BEMS_MAX_RECEIVE_COUNT": reference("MaxReceiveCount"),
            "BEMS_IDEMPOTENCY_TABLE": reference("IdempotencyTable"),
        });
        function(
            &format!("{p}Processor"),
            format!("bems-{cell}-{stage}-processor"),
            &format!("invoice-{stage}-processor"),
            &queue,
            &dlq,
            statements,
            env,
            "ProcessorReservedConcurrency",
        );
    }
    let statements = vec![
        json!({
            "Fn::If": [
                "WithTimestream",
                {
                    "Effect": "Allow",
                    "Action": "timestream:WriteRecords",
                    "Resource": get_att("TimestreamTable", "Arn"),
                },
                { "Ref": "AWS::NoValue" },
            ],
        }),
        // Endpoint discovery is an account-level call with no resource.
        json!({ "Effect": "Allow", "Action": "timestream:DescribeEndpoints", "Resource": "*" }),
    ];
    let env = json!({
        "BEMS_CELL_ID": cell,
        "BEMS_DLQ_URL": reference("StatusDlq"),
        "BEMS_TIMESTREAM_DATABASE": { "Fn::If": ["WithTimestream", reference("TimestreamDatabase"), ""] },
        "BEMS_TIMESTREAM_TABLE": "status_changes",
    });
    function(
        "TimestreamWriter",
        format!("bems-{cell}-timestream-writer"),
        "timestream-writer",
        "StatusQueue",
        "StatusDlq",
        statements,
        env,
        "WriterReservedConcurrency",
    );
}

/// The operations dashboard `bems-C`: the SLA view (visibility latency
/// against the SLA, records stored, the critical alarm), then per stage
/// (records handled, failures by class, dead-lettered, stage latency),
/// the queues (depth and oldest message, DLQ depth) and the API (requests,
/// 4xx, 5xx, latency). The executive and finance views read Timestream and
/// live in the local dashboard (`examples/`), not in CloudWatch.
fn dashboard(spec: &CellSpec) -> Value {
    use crate::api::STAGE_NAME;
    use bems_lambda_names::{processor, writer};
    let cell = spec.cell_id().as_str();
    let region = "${AWS::Region}";
    let bems = |name: &str, function: &str, stat: &str, label: &str| json!(["BEMS", name, "Cell", cell, "Function", function, { "stat": stat, "label": label }]);
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
                "alarms": [format!("arn:${{AWS::Partition}}:cloudwatch:{region}:${{AWS::AccountId}}:alarm:bems-{cell}-critical")],
            },
        }),
    ];
    for (i, stage) in Stage::ALL.into_iter().enumerate() {
        let function = processor(stage);
        let x = u32::try_from(i).unwrap_or(0) * 6;
        let mut metrics = vec![bems("Processed", &function, "Sum", "processed")];
        for class in ["transient", "business", "poison", "held_back"] {
            metrics.push(json!(["BEMS", "Failed", "Cell", cell, "Function", function, "class", class, { "stat": "Sum", "label": format!("failed: {class}") }]));
        }
        for class in ["business", "poison"] {
            metrics.push(json!(["BEMS", "DeadLettered", "Cell", cell, "Function", function, "class", class, { "stat": "Sum", "label": format!("dead-lettered: {class}") }]));
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
    }
    depth.push(queue_metric("ApproximateNumberOfMessagesVisible", spec.status_queue_name(), "status"));
    age.push(queue_metric("ApproximateAgeOfOldestMessage", spec.status_queue_name(), "status"));
    dlqs.push(queue_metric("ApproximateNumberOfMessagesVisible", spec.status_dlq_name(), "status"));
    dlqs.push(queue_metric("ApproximateNumberOfMessagesVisible", format!("bems-{cell}-bus-dlq"), "bus"));
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
    let api = format!("bems-{cell}-ingress");
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
        "Properties": { "DashboardName": format!("bems-{cell}"), "DashboardBody": sub(&body) },
    })
}

/// The `Function` dimension values the functions' metrics carry (as
/// `bems_lambda::function` sets them; a test in `tests/` holds the two
/// together without making this crate depend on the Lambda runtime).
mod bems_lambda_names {
    use bems_core::Stage;

    pub(super) fn processor(stage: Stage) -> String {
        format!("{stage}-processor")
    }

    pub(super) fn writer() -> String {
        "timestream-writer".to_owned()
    }
}

/// The alarms: what pages someone (critical) and what warns operations.
///
/// - critical: any message in any DLQ (the bus DLQ is where EventBridge puts
///   what it failed to deliver after its retries, so it stands for failed
///   invocations without one alarm per rule); a queue's oldest message older
///   than the SLA; the p99 of the writer's visibility latency (event time to
///   stored) above the SLA;
/// - warning: a queue's oldest message older than the warning age; a queue
///   deeper than the threshold for five minutes;
/// - a composite alarm `bems-C-critical` that is in alarm when any critical
///   one is, for a single page.
fn monitoring(spec: &CellSpec, resources: &mut BTreeMap<String, Value>, outputs: &mut BTreeMap<String, Value>) {
    let cell = spec.cell_id().as_str();
    for (severity, logical) in [("critical", "AlertsCritical"), ("warning", "AlertsWarning")] {
        resources.insert(
            logical.into(),
            json!({
                "Type": "AWS::SNS::Topic",
                "Properties": { "TopicName": format!("bems-{cell}-alerts-{severity}"), "KmsMasterKeyId": reference("CellKey") },
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
    let mut queues: Vec<(String, String)> = Stage::ALL.iter().map(|s| (pascal(*s), format!("the {s} queue"))).collect();
    queues.push(("Status".into(), "the status-change queue".into()));
    for (p, what) in &queues {
        let (queue, dlq) = (format!("{p}Queue"), format!("{p}Dlq"));
        let id = format!("{p}DlqNotEmptyAlarm");
        resources.insert(
            id.clone(),
            sqs_alarm(
                format!("bems-{cell}-{}-dlq-not-empty", p.to_lowercase()),
                format!(
                    "A message of {what} was dead-lettered: an invoice is stuck. `bems redrive` after fixing the cause."
                ),
                &dlq,
                "ApproximateNumberOfMessagesVisible",
                json!(0),
                1,
                "AlertsCritical",
            ),
        );
        critical.push(id);
        let id = format!("{p}QueueOverSlaAlarm");
        resources.insert(
            id.clone(),
            sqs_alarm(
                format!("bems-{cell}-{}-oldest-over-sla", p.to_lowercase()),
                format!("The oldest message of {what} has waited longer than the SLA."),
                &queue,
                "ApproximateAgeOfOldestMessage",
                reference("SlaSeconds"),
                1,
                "AlertsCritical",
            ),
        );
        critical.push(id);
        resources.insert(
            format!("{p}QueueAgeAlarm"),
            sqs_alarm(
                format!("bems-{cell}-{}-oldest-age", p.to_lowercase()),
                format!("The oldest message of {what} is older than the warning age: it is falling behind."),
                &queue,
                "ApproximateAgeOfOldestMessage",
                reference("QueueAgeWarningSeconds"),
                1,
                "AlertsWarning",
            ),
        );
        resources.insert(
            format!("{p}QueueDepthAlarm"),
            sqs_alarm(
                format!("bems-{cell}-{}-depth", p.to_lowercase()),
                format!("{} has held more messages than the threshold for five minutes.", capitalized(what)),
                &queue,
                "ApproximateNumberOfMessagesVisible",
                reference("QueueDepthThreshold"),
                5,
                "AlertsWarning",
            ),
        );
    }
    for stage in Stage::ALL {
        resources.insert(format!("{}ErrorRateAlarm", pascal(stage)), error_rate_alarm(cell, stage));
    }
    resources.insert(
        "BusDlqNotEmptyAlarm".into(),
        sqs_alarm(
            format!("bems-{cell}-bus-dlq-not-empty"),
            "EventBridge could not deliver an event to a stage topic after its retries (failed invocations land here)."
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
        "VisibilityOverSlaAlarm".into(),
        json!({
            "Type": "AWS::CloudWatch::Alarm",
            "Properties": {
                "AlarmName": format!("bems-{cell}-visibility-p99-over-sla"),
                "AlarmDescription": "p99 of event time to stored in Timestream (the writer's VisibilityLatency) is above the SLA.",
                "Metrics": [
                    {
                        "Id": "latency",
                        "MetricStat": {
                            "Metric": {
                                "Namespace": "BEMS",
                                "MetricName": "VisibilityLatency",
                                "Dimensions": [
                                    { "Name": "Cell", "Value": cell },
                                    { "Name": "Function", "Value": bems_lambda_names::writer() },
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
    critical.sort();
    let rule = critical.iter().map(|a| format!("ALARM(\"${{{a}}}\")")).collect::<Vec<_>>().join(" OR ");
    resources.insert(
        "CriticalCompositeAlarm".into(),
        json!({
            "Type": "AWS::CloudWatch::CompositeAlarm",
            "Properties": {
                "AlarmName": format!("bems-{cell}-critical"),
                "AlarmDescription": "Any critical alarm of the cell: one page, however many parts broke.",
                "AlarmRule": sub(&rule),
                "AlarmActions": [reference("AlertsCritical")],
            },
        }),
    );
}

/// A stage's error rate from its processor's EMF counts (namespace `BEMS`,
/// dimensions `Cell`, `Function` and, for failures, `class`): records that
/// failed or were dead-lettered, of all records, in percent. Held-back
/// records are a consequence of another failure and do not count again.
fn error_rate_alarm(cell: &str, stage: Stage) -> Value {
    let function = bems_lambda_names::processor(stage);
    let metric = |id: &str, name: &str, class: Option<&str>| {
        let mut dimensions =
            vec![json!({ "Name": "Cell", "Value": cell }), json!({ "Name": "Function", "Value": function })];
        if let Some(class) = class {
            dimensions.push(json!({ "Name": "class", "Value": class }));
        }
        json!({
            "Id": id,
            "MetricStat": {
                "Metric": { "Namespace": "BEMS", "MetricName": name, "Dimensions": dimensions },
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
            "AlarmName": format!("bems-{cell}-{stage}-error-rate"),
            "AlarmDescription": format!("More than ErrorRatePercent of the {stage} processor's records failed, five minutes running."),
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
                    "Label": format!("{stage} error rate (%)"),
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

/// The Timestream database and table (condition `WithTimestream`):
/// retention from the parameters, magnetic store writes on so that late
/// corrections beyond the memory window are still stored.
fn timestream(spec: &CellSpec, resources: &mut BTreeMap<String, Value>, outputs: &mut BTreeMap<String, Value>) {
    let database = format!("bems_{}", spec.cell_id().as_str().replace('-', "_"));
    resources.insert(
        "TimestreamDatabase".into(),
        json!({
            "Type": "AWS::Timestream::Database",
            "Condition": "WithTimestream",
            "Metadata": maintenance_mode_note(),
            "Properties": { "DatabaseName": database, "KmsKeyId": reference("CellKey") },
        }),
    );
    resources.insert(
        "TimestreamTable".into(),
        json!({
            "Type": "AWS::Timestream::Table",
            "Condition": "WithTimestream",
            "Metadata": maintenance_mode_note(),
            "Properties": {
                "DatabaseName": reference("TimestreamDatabase"),
                "TableName": "status_changes",
                "RetentionProperties": {
                    "MemoryStoreRetentionPeriodInHours": sub("${MemoryRetentionHours}"),
                    "MagneticStoreRetentionPeriodInDays": sub("${MagneticRetentionDays}"),
                },
                "MagneticStoreWriteProperties": { "EnableMagneticStoreWrites": true },
            },
        }),
    );
    outputs.insert(
        "TimestreamDatabase".into(),
        json!({ "Condition": "WithTimestream", "Value": reference("TimestreamDatabase") }),
    );
}

/// Accepts cfn-lint's warning that Timestream for LiveAnalytics is in
/// maintenance mode: accounts that have it keep using it, the others set
/// `CreateTimestream=false` and bring another `RecordSink`.
fn maintenance_mode_note() -> Value {
    json!({ "cfn-lint": { "config": { "ignore_checks": ["W3697"] } } })
}

/// The cell's key: the account administers it (and grants its functions
/// `kms:Decrypt` through their roles); EventBridge (this cell's rules only)
/// may use it to publish to the topics and to the bus DLQ, and SNS to send
/// to the queues.
fn cell_key(rules_arn: &str) -> Value {
    json!({
        "Type": "AWS::KMS::Key",
        "Properties": {
            "Description": "BEMS: encrypts the cell's topics and queues.",
            "EnableKeyRotation": true,
            "KeyPolicy": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Sid": "account-administers",
                        "Effect": "Allow",
                        "Principal": { "AWS": sub("arn:${AWS::Partition}:iam::${AWS::AccountId}:root") },
                        "Action": "kms:*",
                        "Resource": "*",
                    },
                    {
                        "Sid": "rules-publish",
                        "Effect": "Allow",
                        "Principal": { "Service": "events.amazonaws.com" },
                        "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
                        "Resource": "*",
                        "Condition": { "ArnLike": { "aws:SourceArn": sub(rules_arn) } },
                    },
                    {
                        "Sid": "logs-encrypt",
                        "Effect": "Allow",
                        "Principal": { "Service": sub("logs.${AWS::Region}.amazonaws.com") },
                        "Action": ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
                        "Resource": "*",
                        "Condition": {
                            "ArnLike": {
                                "kms:EncryptionContext:aws:logs:arn":
                                    sub("arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}:log-group:*"),
                            },
                        },
                    },
                    {
                        "Sid": "alarms-notify",
                        "Effect": "Allow",
                        "Principal": { "Service": "cloudwatch.amazonaws.com" },
                        "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
                        "Resource": "*",
                        "Condition": { "StringEquals": { "aws:SourceAccount": sub("${AWS::AccountId}") } },
                    },
                    {
                        "Sid": "topics-deliver",
                        "Effect": "Allow",
                        "Principal": { "Service": "sns.amazonaws.com" },
                        "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
                        "Resource": "*",
                        "Condition": { "StringEquals": { "aws:SourceAccount": sub("${AWS::AccountId}") } },
                    },
                ],
            },
        },
    })
}

/// A FIFO queue of the cell, encrypted with the cell key.
fn fifo_queue(name: &str, extra: Value) -> Value {
    let mut properties = json!({
        "QueueName": name,
        "FifoQueue": true,
        "ContentBasedDeduplication": true,
        "KmsMasterKeyId": reference("CellKey"),
        "KmsDataKeyReusePeriodSeconds": 3600,
    });
    if let (Some(p), Value::Object(extra)) = (properties.as_object_mut(), extra) {
        p.extend(extra);
    }
    json!({ "Type": "AWS::SQS::Queue", "Properties": properties })
}

/// A dead-letter queue: kept 14 days, the most SQS allows.
fn dlq(name: &str) -> Value {
    fifo_queue(name, json!({ "MessageRetentionPeriod": 1_209_600 }))
}

/// A stage or status queue, dead-lettering to `dlq_id`.
fn queue(name: &str, dlq_id: &str) -> Value {
    fifo_queue(
        name,
        json!({
            "VisibilityTimeout": reference("VisibilityTimeoutSeconds"),
            "RedrivePolicy": {
                "deadLetterTargetArn": get_att(dlq_id, "Arn"),
                "maxReceiveCount": reference("MaxReceiveCount"),
            },
        }),
    )
}

/// Lets `topics` (and nothing else) send to the queue `queue_id`.
fn queue_policy(queue_id: &str, topics: &[Value]) -> Value {
    json!({
        "Type": "AWS::SQS::QueuePolicy",
        "Properties": {
            "Queues": [reference(queue_id)],
            "PolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [{
                    "Sid": "bems-topics",
                    "Effect": "Allow",
                    "Principal": { "Service": "sns.amazonaws.com" },
                    "Action": "sqs:SendMessage",
                    "Resource": get_att(queue_id, "Arn"),
                    "Condition": { "ArnEquals": { "aws:SourceArn": topics } },
                }],
            },
        },
    })
}

/// One stage's rules: one per partition, each targeting the stage topic
/// with the partition's static message group.
fn rules_stack(spec: &CellSpec, stage: Stage) -> Value {
    let mut resources: BTreeMap<String, Value> = BTreeMap::new();
    for rule in spec.stage_rules().into_iter().filter(|r| r.stage == stage) {
        resources.insert(
            format!("Rule{}P{:02}", pascal(stage), rule.partition.get()),
            json!({
                "Type": "AWS::Events::Rule",
                "Properties": {
                    "Name": rule.name,
                    "EventBusName": reference("BusName"),
                    "EventPattern": rule.pattern.to_value(),
                    "State": "ENABLED",
                    "Targets": [{
                        "Id": "stage",
                        "Arn": reference("TopicArn"),
                        "SqsParameters": { "MessageGroupId": rule.message_group_id },
                        "DeadLetterConfig": { "Arn": reference("DeadLetterQueueArn") },
                        "RetryPolicy": { "MaximumRetryAttempts": 185, "MaximumEventAgeInSeconds": 86_400 },
                    }],
                },
            }),
        );
    }
    json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": format!(
            "BEMS cell {}: the {stage} rules, one per partition. Generated by `bems template`; do not edit.",
            spec.cell_id()
        ),
        "Parameters": {
            "BusName": { "Type": "String", "Description": "The cell's event bus." },
            "TopicArn": { "Type": "String", "Description": format!("The {stage} SNS FIFO topic.") },
            "DeadLetterQueueArn": { "Type": "String", "Description": "Where EventBridge puts events it cannot deliver." },
        },
        "Resources": resources,
    })
}
