//! The six Lambda functions and their roles.

use std::collections::BTreeMap;

use bems_core::Stage;
use bems_core::routing::CellSpec;
use serde_json::{Value, json};

use super::*;

/// The six functions (`AWS::Serverless::Function`, arm64, built by
/// cargo-lambda from `bems-lambda`), each with its own role scoped to the
/// resources it touches, its log group (encrypted, kept
/// `LogRetentionDays`), X-Ray, and SQS event sources with
/// `ReportBatchItemFailures`: the four processors (their stage queue), the
/// route forwarder (the four route queues), the Timestream writer (the
/// status queue). Timeout 30 s: the queues' visibility timeout
/// (180 s by default) is six times that, as AWS advises.
pub(super) fn functions(spec: &CellSpec, defaults: &TemplateDefaults, resources: &mut BTreeMap<String, Value>) {
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
                        sources: &[String],
                        mut statements: Vec<Value>,
                        env: Value,
                        concurrency: &str| {
        statements.extend(sources.iter().map(|q| sqs_consume(q)));
        statements.push(kms.clone());
        let events: BTreeMap<&str, Value> = sources
            .iter()
            .map(|q| {
                let source = json!({
                    "Type": "SQS",
                    "Properties": {
                        "Queue": get_att(q, "Arn"),
                        "BatchSize": 10,
                        "FunctionResponseTypes": ["ReportBatchItemFailures"],
                    },
                });
                (q.as_str(), source)
            })
            .collect();
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
                    "Events": events,
                },
            }),
        );
    };
    for stage in Stage::ALL {
        let p = pascal(stage);
        let (queue, dlq) = (format!("{p}Queue"), format!("{p}Dlq"));
        let statements = vec![
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
            &[queue],
            statements,
            env,
            "ProcessorReservedConcurrency",
        );
    }
    // The forwarder reads the route queues and publishes to the topics;
    // failures stay in the route queues (SQS's redrive moves them to the
    // route DLQs), so it sends to no queue.
    let routes: Vec<String> = Stage::ALL.iter().map(|s| format!("{}Route", pascal(*s))).collect();
    let topics: Vec<Value> = Stage::ALL.iter().map(|s| reference(&format!("{}Topic", pascal(*s)))).collect();
    function(
        "RouteForwarder",
        format!("bems-{cell}-route-forwarder"),
        "route-forwarder",
        &routes,
        vec![json!({ "Effect": "Allow", "Action": "sns:Publish", "Resource": topics })],
        json!({
            "BEMS_CELL_ID": cell,
            "BEMS_PARTITIONS": spec.partitions().get().to_string(),
            "BEMS_ACCOUNT_ID": reference("AWS::AccountId"),
        }),
        "ForwarderReservedConcurrency",
    );
    let statements = vec![
        sqs_send("StatusDlq"),
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
        "BEMS_TIMESTREAM_TABLE": bems_core::routing::TIMESTREAM_TABLE,
    });
    function(
        "TimestreamWriter",
        format!("bems-{cell}-timestream-writer"),
        "timestream-writer",
        &["StatusQueue".to_owned()],
        statements,
        env,
        "WriterReservedConcurrency",
    );
}
