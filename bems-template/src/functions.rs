//! The six Lambda functions, their roles and their event sources.

use std::collections::BTreeMap;

use bems_core::Stage;
use bems_core::contract::{Function, env};
use bems_core::routing::CellSpec;
use serde_json::{Value, json};

use super::*;

/// The range of an SQS event source's `MaximumConcurrency` (Lambda API
/// reference, `ScalingConfig`).
pub(super) const MIN_SOURCE_CONCURRENCY: u32 = 2;
pub(super) const MAX_SOURCE_CONCURRENCY: u32 = 1000;

/// The concurrency that saturates a FIFO queue with `groups` message
/// groups: Lambda runs at most one batch per group at a time, so more is
/// never used; within the range an event source mapping takes.
pub(super) fn source_concurrency(groups: u32) -> u32 {
    groups.clamp(MIN_SOURCE_CONCURRENCY, MAX_SOURCE_CONCURRENCY)
}

/// One function of the cell.
struct Lambda<'a> {
    /// Logical id: `IngestionProcessor`; its role is `<id>Role`, its log
    /// group `<id>Logs`.
    logical: String,
    name: String,
    /// The `bems-lambda` binary.
    binary: String,
    /// The queues it consumes (logical ids) and the parameter bounding each
    /// event source's concurrency.
    sources: Vec<String>,
    concurrency: &'a str,
    /// What it may do besides consuming its queues, logging and tracing.
    statements: Vec<Value>,
    env: Value,
    /// The template condition it exists under, if any.
    condition: Option<&'a str>,
    /// Its `VpcConfig` and layers (the PostgreSQL writer's), if any.
    vpc: Option<Value>,
    layers: Vec<Value>,
}

/// The functions (`AWS::Serverless::Function`, arm64, built by
/// cargo-lambda from `bems-lambda`): the four processors (their stage
/// queue), the route forwarder (the four route queues) and the status
/// writer (the status queue): the PostgreSQL writer in the database's VPC
/// with `Store=aurora` or `existing`, the Timestream writer with
/// `Store=timestream`, none with `Store=none`.
///
/// Each has its own role (`AWS::IAM::Role`) naming exactly the resources it
/// touches: given `Role`, SAM creates no role of its own, so none of the
/// managed policies it would attach (`AWSLambdaSQSQueueExecutionRole` grants
/// receive and delete on every queue of the account). Each has its log
/// group (encrypted, kept `LogRetentionDays`, retained when the stack is
/// deleted), X-Ray, and SQS event sources with `ReportBatchItemFailures`
/// and a `MaximumConcurrency` instead of reserved concurrency: a new
/// account's concurrency quota is small, and Lambda refuses a reservation
/// that leaves less than its minimum unreserved. Timeout 30 s: the queues'
/// visibility timeout (180 s by default) is six times that, as AWS advises.
pub(super) fn functions(spec: &CellSpec, defaults: &TemplateDefaults, resources: &mut BTreeMap<String, Value>) {
    let cell = spec.cell_id().as_str();
    let partitions = spec.partitions().get().to_string();
    let mut all = Vec::new();
    for stage in Stage::ALL {
        let p = pascal(stage);
        let (queue, dlq) = (format!("{p}Queue"), format!("{p}Dlq"));
        all.push(Lambda {
            logical: function_logical_id(Function::Processor(stage)),
            name: spec.function_name(Function::Processor(stage)),
            binary: Function::Processor(stage).binary(),
            sources: vec![queue],
            concurrency: "ProcessorMaximumConcurrency",
            statements: vec![
                sqs_send(&dlq),
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
            ],
            env: json!({
                (env::CELL_ID): cell,
                (env::PARTITIONS): partitions,
                (env::DLQ_URL): reference(&dlq),
                (env::MAX_RECEIVE_COUNT): reference("MaxReceiveCount"),
                (env::ACCOUNT_ID): reference("AWS::AccountId"),
                (env::IDEMPOTENCY_TABLE): reference("IdempotencyTable"),
            }),
            condition: None,
            vpc: None,
            layers: Vec::new(),
        });
    }
    // The forwarder reads the route queues and publishes to the topics;
    // failures stay in the route queues (SQS's redrive moves them to the
    // route DLQs), so it sends to no queue.
    let topics: Vec<Value> = Stage::ALL.iter().map(|s| reference(&format!("{}Topic", pascal(*s)))).collect();
    all.push(Lambda {
        logical: function_logical_id(Function::RouteForwarder),
        name: spec.function_name(Function::RouteForwarder),
        binary: Function::RouteForwarder.binary(),
        sources: Stage::ALL.iter().map(|s| format!("{}Route", pascal(*s))).collect(),
        concurrency: "ForwarderMaximumConcurrency",
        statements: vec![json!({ "Effect": "Allow", "Action": "sns:Publish", "Resource": topics })],
        env: json!({
            (env::CELL_ID): cell,
            (env::PARTITIONS): partitions,
            (env::ACCOUNT_ID): reference("AWS::AccountId"),
        }),
        condition: None,
        vpc: None,
        layers: Vec::new(),
    });
    // The status writer: one function per store kind, the same name (at
    // most one exists).
    all.push(Lambda {
        logical: "PostgresWriter".to_owned(),
        name: spec.function_name(Function::StatusWriter),
        binary: bems_core::contract::POSTGRES_WRITER_BINARY.to_owned(),
        sources: vec!["StatusQueue".to_owned()],
        concurrency: "WriterMaximumConcurrency",
        statements: [vec![sqs_send("StatusDlq")], crate::database::writer_statements()].concat(),
        env: json!({
            (env::CELL_ID): cell,
            (env::PARTITIONS): partitions,
            (env::DLQ_URL): reference("StatusDlq"),
            (env::MAX_RECEIVE_COUNT): reference("MaxReceiveCount"),
            (env::POSTGRES_URL): crate::database::writer_url(),
            (env::POSTGRES_AUTH): "iam",
        }),
        condition: Some("WithPostgres"),
        vpc: Some(crate::database::writer_vpc()),
        layers: vec![reference("DatabaseCaLayer")],
    });
    all.push(Lambda {
        logical: "TimestreamWriter".to_owned(),
        name: spec.function_name(Function::StatusWriter),
        binary: bems_core::contract::TIMESTREAM_WRITER_BINARY.to_owned(),
        sources: vec!["StatusQueue".to_owned()],
        concurrency: "WriterMaximumConcurrency",
        statements: vec![
            sqs_send("StatusDlq"),
            json!({ "Effect": "Allow", "Action": "timestream:WriteRecords", "Resource": get_att("TimestreamTable", "Arn") }),
            // Endpoint discovery is an account-level call with no resource.
            json!({ "Effect": "Allow", "Action": "timestream:DescribeEndpoints", "Resource": "*" }),
        ],
        env: json!({
            (env::CELL_ID): cell,
            (env::PARTITIONS): partitions,
            (env::DLQ_URL): reference("StatusDlq"),
            (env::TIMESTREAM_DATABASE): reference("TimestreamDatabase"),
            (env::TIMESTREAM_TABLE): bems_core::contract::TIMESTREAM_TABLE,
        }),
        condition: Some("WithTimestream"),
        vpc: None,
        layers: Vec::new(),
    });
    for function in all {
        insert(function, defaults, resources);
    }
}

/// Sending to a queue of the cell (a DLQ).
fn sqs_send(queue: &str) -> Value {
    json!({ "Effect": "Allow", "Action": ["sqs:SendMessage", "sqs:GetQueueAttributes"], "Resource": get_att(queue, "Arn") })
}

/// What Lambda's event source needs of the function's role to poll `queue`.
fn sqs_consume(queue: &str) -> Value {
    json!({
        "Effect": "Allow",
        "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes"],
        "Resource": get_att(queue, "Arn"),
    })
}

fn insert(f: Lambda<'_>, defaults: &TemplateDefaults, resources: &mut BTreeMap<String, Value>) {
    let logs = format!("{}Logs", f.logical);
    let role = format!("{}Role", f.logical);
    let mut statements = f.statements;
    statements.extend(f.sources.iter().map(|q| sqs_consume(q)));
    statements.extend([
        // The queues, topics and the function's logs are under the cell key.
        json!({ "Effect": "Allow", "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": get_att("CellKey", "Arn") }),
        // Its own log group only (created below, so no logs:CreateLogGroup).
        json!({ "Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents"], "Resource": get_att(&logs, "Arn") }),
        // Active tracing; X-Ray's write actions take no resource.
        json!({ "Effect": "Allow", "Action": ["xray:PutTraceSegments", "xray:PutTelemetryRecords"], "Resource": "*" }),
    ]);
    let events: BTreeMap<&str, Value> = f
        .sources
        .iter()
        .map(|q| {
            let source = json!({
                "Type": "SQS",
                "Properties": {
                    "Queue": get_att(q, "Arn"),
                    "BatchSize": 10,
                    "FunctionResponseTypes": ["ReportBatchItemFailures"],
                    "ScalingConfig": { "MaximumConcurrency": reference(f.concurrency) },
                },
            });
            (q.as_str(), source)
        })
        .collect();
    let mut log_group = retained(json!({
        "Type": "AWS::Logs::LogGroup",
        "Properties": {
            "LogGroupName": format!("/aws/lambda/{}", f.name),
            "RetentionInDays": reference("LogRetentionDays"),
            "KmsKeyId": get_att("CellKey", "Arn"),
        },
    }));
    let mut role_resource = json!({
        "Type": "AWS::IAM::Role",
        "Properties": {
            "Description": format!("{}: its queues, its log group, the cell key, and what it writes to; nothing else.", f.name),
            "AssumeRolePolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [{
                    "Effect": "Allow",
                    "Principal": { "Service": "lambda.amazonaws.com" },
                    "Action": "sts:AssumeRole",
                }],
            },
            "Policies": [{
                "PolicyName": "function",
                "PolicyDocument": { "Version": "2012-10-17", "Statement": statements },
            }],
        },
    });
    let mut skips = vec![
        json!({ "id": "CKV_AWS_115", "comment": "Bounded by each event source's MaximumConcurrency instead: reserved concurrency fails on new accounts, whose concurrency quota is reduced." }),
        json!({ "id": "CKV_AWS_116", "comment": "Invoked by an SQS event source: failures go back to the queue and its DLQ; a Lambda DLQ applies to asynchronous invocations only." }),
    ];
    if f.vpc.is_none() {
        skips.push(json!({ "id": "CKV_AWS_117", "comment": "Calls only AWS public endpoints (SQS, SNS, EventBridge, Timestream, DynamoDB) with IAM, nothing in a VPC; a VPC would add endpoint or NAT cost and cold-start time for nothing. (The PostgreSQL writer, which reaches a database, runs in its VPC.)" }));
    }
    let mut function = json!({
        "Type": "AWS::Serverless::Function",
        "DependsOn": [logs],
        "Metadata": {
            "BuildMethod": "rust-cargolambda",
            "BuildProperties": { "Binary": f.binary },
            "checkov": { "skip": skips },
        },
        "Properties": {
            "FunctionName": f.name,
            "CodeUri": defaults.code_uri,
            "Handler": "bootstrap",
            "Runtime": "provided.al2023",
            "Architectures": ["arm64"],
            "MemorySize": 256,
            "Timeout": 30,
            "Tracing": "Active",
            "KmsKeyArn": get_att("CellKey", "Arn"),
            "Role": get_att(&role, "Arn"),
            "Environment": { "Variables": f.env },
            "Events": events,
        },
    });
    if let Some(vpc) = f.vpc {
        function["Properties"]["VpcConfig"] = vpc;
    }
    if !f.layers.is_empty() {
        function["Properties"]["Layers"] = json!(f.layers);
    }
    if let Some(condition) = f.condition {
        for resource in [&mut log_group, &mut role_resource, &mut function] {
            resource["Condition"] = json!(condition);
        }
    }
    resources.insert(logs, log_group);
    resources.insert(role, role_resource);
    resources.insert(f.logical, function);
}
