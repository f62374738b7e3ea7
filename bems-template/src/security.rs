//! The optional security template (`security.json`): an audit trail, AWS
//! Config rules that keep the cell's resources compliant, and the
//! cross-account access a central monitoring account uses.
//!
//! Separate from `cell.json` because its parts are often account-wide
//! already (an organization trail, a Config recorder from Control Tower):
//! each part has its own switch.
//!
//! - **Trail** (`CreateTrail`): a multi-Region CloudTrail trail of
//!   management events with log file validation, encrypted with its own
//!   key, into a versioned, private, TLS-only bucket whose access logs go to
//!   a second bucket. Data events (every SQS, SNS and Lambda call) are left
//!   out on purpose: at month-end volume they would be billed per call, for
//!   hundreds of millions of calls a day, and the pipeline's own history
//!   (Timestream) is the audit trail of the invoices.
//! - **Config rules** (always; a configuration recorder must exist, and the
//!   required `ConfigRecorderSource` parameter says whether this stack creates
//!   one, recording the rules' resource types, or one exists): AWS managed rules for encryption (topics, log groups, key
//!   rotation, the trail), dead-letter queues (every queue tagged
//!   `bems:role=source`), no public access (queues, buckets, functions) and
//!   the API (X-Ray, WAF, execution logging); and Guard rules for what no
//!   managed rule checks: every queue of the cell encrypted with a customer
//!   managed key, every target of the cell's rules with a dead-letter queue
//!   and a retry policy. The Guard rules are tested against Config items
//!   shaped like the cell's resources (`bems-template/tests/template.rs`).
//! - **Monitoring role** (`MonitoringAccountId` and `MonitoringExternalId`):
//!   read-only access for a central account to this cell's metrics, alarms,
//!   dashboard, logs, queue attributes and Timestream table, nothing else;
//!   and, with `MonitoringSinkArn`, a CloudWatch Observability Access
//!   Manager link that shares metrics, logs and traces with that account's
//!   sink.

use std::collections::BTreeMap;

use bems_core::routing::CellSpec;
use serde_json::{Value, json};

use super::*;

/// The Guard rules of a cell, one `(name, resource type, policy)` each:
/// what AWS Config evaluates against the configuration items of the cell's
/// resources.
pub fn guard_rules(spec: &CellSpec) -> Vec<(String, &'static str, String)> {
    let cell = spec.cell_id().as_str();
    let prefix = format!("bems-{cell}-");
    vec![
        (
            format!("bems-{cell}-queues-use-a-customer-managed-key"),
            "AWS::SQS::Queue",
            format!(
                r#"# Every queue of cell {cell} is encrypted with a customer managed key:
# EventBridge and SNS cannot send to a queue under the AWS managed key.
rule bems_queue_customer_managed_key when resourceType == "AWS::SQS::Queue" {{
    when configuration.QueueName == /^{prefix}/ {{
        configuration.KmsMasterKeyId exists
        configuration.KmsMasterKeyId != ""
        configuration.KmsMasterKeyId != "alias/aws/sqs"
    }}
}}
"#
            ),
        ),
        (
            format!("bems-{cell}-rule-targets-have-a-dlq"),
            "AWS::Events::Rule",
            format!(
                r#"# Every target of a rule on bus {bus} has a dead-letter queue and a retry
# policy, so an event EventBridge cannot deliver is kept, not dropped.
rule bems_rule_targets_dead_letter when resourceType == "AWS::Events::Rule" {{
    when configuration.EventBusName == "{bus}" {{
        configuration.Targets[*] {{
            DeadLetterConfig.Arn exists
            RetryPolicy.MaximumEventAgeInSeconds exists
        }}
    }}
}}
"#,
                bus = spec.bus_name()
            ),
        ),
    ]
}

/// The AWS managed Config rules: `(rule name suffix, identifier, scope,
/// input parameters)`. A `None` scope is a periodic, account-wide rule.
fn managed_rules() -> Vec<(&'static str, &'static str, Option<Value>, Option<Value>)> {
    let types = |t: &[&str]| Some(json!({ "ComplianceResourceTypes": t }));
    vec![
        ("topics-encrypted", "SNS_ENCRYPTED_KMS", types(&["AWS::SNS::Topic"]), None),
        (
            "queues-have-a-dlq",
            "SQS_QUEUE_DLQ_CHECK",
            // Only the queues that consume: a dead-letter queue has none of its own.
            Some(json!({ "TagKey": "bems:role", "TagValue": "source" })),
            None,
        ),
        ("queues-not-public", "SQS_QUEUE_NO_PUBLIC_ACCESS", types(&["AWS::SQS::Queue"]), None),
        ("functions-not-public", "LAMBDA_FUNCTION_PUBLIC_ACCESS_PROHIBITED", types(&["AWS::Lambda::Function"]), None),
        ("buckets-not-public", "S3_BUCKET_LEVEL_PUBLIC_ACCESS_PROHIBITED", types(&["AWS::S3::Bucket"]), None),
        ("buckets-tls-only", "S3_BUCKET_SSL_REQUESTS_ONLY", types(&["AWS::S3::Bucket"]), None),
        ("api-xray", "API_GW_XRAY_ENABLED", types(&["AWS::ApiGateway::Stage"]), None),
        ("api-waf", "API_GW_ASSOCIATED_WITH_WAF", types(&["AWS::ApiGateway::Stage"]), None),
        (
            "api-execution-logging",
            "API_GW_EXECUTION_LOGGING_ENABLED",
            types(&["AWS::ApiGateway::Stage"]),
            Some(json!({ "loggingLevel": "ERROR,INFO" })),
        ),
        ("log-groups-encrypted", "CLOUDWATCH_LOG_GROUP_ENCRYPTED", None, None),
        ("keys-rotate", "CMK_BACKING_KEY_ROTATION_ENABLED", None, None),
        ("trail-enabled", "CLOUD_TRAIL_ENABLED", None, None),
        ("trail-multi-region", "MULTI_REGION_CLOUD_TRAIL_ENABLED", None, None),
        ("trail-encrypted", "CLOUD_TRAIL_ENCRYPTION_ENABLED", None, None),
        ("trail-validated", "CLOUD_TRAIL_LOG_FILE_VALIDATION_ENABLED", None, None),
    ]
}

/// The resource types the optional recorder records: every type the
/// change-triggered rules evaluate, each a value of AWS Config's
/// `ResourceType` (botocore's `config` service model). Log groups are not
/// one: `CLOUDWATCH_LOG_GROUP_ENCRYPTED` is a periodic rule, which reads
/// them without the recorder.
const RECORDED_TYPES: [&str; 8] = [
    "AWS::SQS::Queue",
    "AWS::SNS::Topic",
    "AWS::Events::Rule",
    "AWS::Lambda::Function",
    "AWS::ApiGateway::Stage",
    "AWS::S3::Bucket",
    "AWS::KMS::Key",
    "AWS::CloudTrail::Trail",
];

/// `security.json` of `spec`'s cell.
pub fn security_template(spec: &CellSpec) -> Value {
    let cell = spec.cell_id().as_str();
    let mut resources: BTreeMap<String, Value> = BTreeMap::new();
    let mut outputs: BTreeMap<String, Value> = BTreeMap::new();
    let trail_name = format!("bems-{cell}-audit");
    let trail_arn =
        format!("arn:${{AWS::Partition}}:cloudtrail:${{AWS::Region}}:${{AWS::AccountId}}:trail/{trail_name}");

    resources.insert(
        "AuditKey".into(),
        rotating_key(
            &format!("BEMS cell {cell}: encrypts the audit trail and the Config snapshots."),
            json!([
                        {
                            "Sid": "trail-encrypts",
                            "Effect": "Allow",
                            "Principal": { "Service": "cloudtrail.amazonaws.com" },
                            "Action": "kms:GenerateDataKey*",
                            "Resource": "*",
                            "Condition": {
                                "StringLike": {
                                    "kms:EncryptionContext:aws:cloudtrail:arn":
                                        sub("arn:${AWS::Partition}:cloudtrail:*:${AWS::AccountId}:trail/*"),
                                },
                                "StringEquals": { "aws:SourceArn": sub(&trail_arn) },
                            },
                        },
                        {
                            "Sid": "trail-describes",
                            "Effect": "Allow",
                            "Principal": { "Service": "cloudtrail.amazonaws.com" },
                            "Action": "kms:DescribeKey",
                            "Resource": "*",
                            "Condition": { "StringEquals": { "aws:SourceArn": sub(&trail_arn) } },
                        },
                        {
                            "Sid": "config-delivers",
                            "Effect": "Allow",
                            "Principal": { "Service": "config.amazonaws.com" },
                            "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
                            "Resource": "*",
                            "Condition": { "StringEquals": { "aws:SourceAccount": sub("${AWS::AccountId}") } },
                        },
            ]),
        ),
    );

    // Server access logs of the audit bucket. Their target cannot use
    // SSE-KMS, and logging it to itself would loop.
    resources.insert(
        "AuditAccessLogs".into(),
        json!({
            "Type": "AWS::S3::Bucket",
            "Metadata": { "checkov": { "skip": [{
                "id": "CKV_AWS_18",
                "comment": "This bucket receives the audit bucket's access logs; logging it too would need a third bucket, and so on.",
            }] } },
            "Properties": {
                "VersioningConfiguration": { "Status": "Enabled" },
                "BucketEncryption": { "ServerSideEncryptionConfiguration": [{
                    "ServerSideEncryptionByDefault": { "SSEAlgorithm": "AES256" },
                }] },
                "PublicAccessBlockConfiguration": private_bucket(),
                "OwnershipControls": { "Rules": [{ "ObjectOwnership": "BucketOwnerEnforced" }] },
                "LifecycleConfiguration": { "Rules": [{
                    "Id": "expire",
                    "Status": "Enabled",
                    "ExpirationInDays": reference("AuditRetentionDays"),
                    "NoncurrentVersionExpiration": { "NoncurrentDays": 30 },
                }] },
            },
        }),
    );
    resources.insert(
        "AuditAccessLogsPolicy".into(),
        json!({
            "Type": "AWS::S3::BucketPolicy",
            "Properties": {
                "Bucket": reference("AuditAccessLogs"),
                "PolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Sid": "s3-logging-delivers",
                            "Effect": "Allow",
                            "Principal": { "Service": "logging.s3.amazonaws.com" },
                            "Action": "s3:PutObject",
                            "Resource": sub("${AuditAccessLogs.Arn}/*"),
                            "Condition": {
                                "ArnLike": { "aws:SourceArn": get_att("AuditBucket", "Arn") },
                                "StringEquals": { "aws:SourceAccount": sub("${AWS::AccountId}") },
                            },
                        },
                        tls_only("AuditAccessLogs"),
                    ],
                },
            },
        }),
    );
    resources.insert(
        "AuditBucket".into(),
        json!({
            "Type": "AWS::S3::Bucket",
            "Properties": {
                "VersioningConfiguration": { "Status": "Enabled" },
                "BucketEncryption": { "ServerSideEncryptionConfiguration": [{
                    "ServerSideEncryptionByDefault": { "SSEAlgorithm": "aws:kms", "KMSMasterKeyID": get_att("AuditKey", "Arn") },
                    "BucketKeyEnabled": true,
                }] },
                "PublicAccessBlockConfiguration": private_bucket(),
                "OwnershipControls": { "Rules": [{ "ObjectOwnership": "BucketOwnerEnforced" }] },
                "LoggingConfiguration": { "DestinationBucketName": reference("AuditAccessLogs"), "LogFilePrefix": "audit/" },
                "LifecycleConfiguration": { "Rules": [{
                    "Id": "expire",
                    "Status": "Enabled",
                    "ExpirationInDays": reference("AuditRetentionDays"),
                    "NoncurrentVersionExpiration": { "NoncurrentDays": 30 },
                }] },
            },
        }),
    );
    let account_logs = |service: &str| sub(&format!("${{AuditBucket.Arn}}/AWSLogs/${{AWS::AccountId}}/{service}/*"));
    resources.insert(
        "AuditBucketPolicy".into(),
        json!({
            "Type": "AWS::S3::BucketPolicy",
            "Properties": {
                "Bucket": reference("AuditBucket"),
                "PolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Sid": "trail-checks-acl",
                            "Effect": "Allow",
                            "Principal": { "Service": "cloudtrail.amazonaws.com" },
                            "Action": "s3:GetBucketAcl",
                            "Resource": get_att("AuditBucket", "Arn"),
                            "Condition": { "StringEquals": { "aws:SourceArn": sub(&trail_arn) } },
                        },
                        {
                            "Sid": "trail-writes",
                            "Effect": "Allow",
                            "Principal": { "Service": "cloudtrail.amazonaws.com" },
                            "Action": "s3:PutObject",
                            "Resource": account_logs("CloudTrail"),
                            "Condition": { "StringEquals": {
                                "s3:x-amz-acl": "bucket-owner-full-control",
                                "aws:SourceArn": sub(&trail_arn),
                            } },
                        },
                        {
                            "Sid": "config-checks-bucket",
                            "Effect": "Allow",
                            "Principal": { "Service": "config.amazonaws.com" },
                            "Action": ["s3:GetBucketAcl", "s3:ListBucket"],
                            "Resource": get_att("AuditBucket", "Arn"),
                            "Condition": { "StringEquals": { "aws:SourceAccount": sub("${AWS::AccountId}") } },
                        },
                        {
                            "Sid": "config-writes",
                            "Effect": "Allow",
                            "Principal": { "Service": "config.amazonaws.com" },
                            "Action": "s3:PutObject",
                            "Resource": account_logs("Config"),
                            "Condition": { "StringEquals": {
                                "s3:x-amz-acl": "bucket-owner-full-control",
                                "aws:SourceAccount": sub("${AWS::AccountId}"),
                            } },
                        },
                        tls_only("AuditBucket"),
                    ],
                },
            },
        }),
    );
    resources.insert(
        "Trail".into(),
        json!({
            "Type": "AWS::CloudTrail::Trail",
            "Condition": "WithTrail",
            "DependsOn": ["AuditBucketPolicy"],
            "Properties": {
                "TrailName": trail_name,
                "S3BucketName": reference("AuditBucket"),
                "KMSKeyId": get_att("AuditKey", "Arn"),
                "IsLogging": true,
                "IsMultiRegionTrail": true,
                "IncludeGlobalServiceEvents": true,
                "EnableLogFileValidation": true,
                // Management events only; see the module docs for why not data events.
                "EventSelectors": [{ "ReadWriteType": "All", "IncludeManagementEvents": true }],
            },
        }),
    );

    // The optional recorder: one per account and Region.
    resources.insert(
        "ConfigRecorderRole".into(),
        json!({
            "Type": "AWS::IAM::Role",
            "Condition": "WithRecorder",
            "Properties": {
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [{
                        "Effect": "Allow",
                        "Principal": { "Service": "config.amazonaws.com" },
                        "Action": "sts:AssumeRole",
                        "Condition": { "StringEquals": { "aws:SourceAccount": sub("${AWS::AccountId}") } },
                    }],
                },
                "ManagedPolicyArns": [sub("arn:${AWS::Partition}:iam::aws:policy/service-role/AWS_ConfigRole")],
            },
        }),
    );
    resources.insert(
        "ConfigRecorder".into(),
        json!({
            "Type": "AWS::Config::ConfigurationRecorder",
            "Condition": "WithRecorder",
            "Properties": {
                "RoleARN": get_att("ConfigRecorderRole", "Arn"),
                "RecordingGroup": {
                    "AllSupported": false,
                    "IncludeGlobalResourceTypes": false,
                    "ResourceTypes": RECORDED_TYPES,
                    "RecordingStrategy": { "UseOnly": "INCLUSION_BY_RESOURCE_TYPES" },
                },
            },
        }),
    );
    resources.insert(
        "ConfigDelivery".into(),
        json!({
            "Type": "AWS::Config::DeliveryChannel",
            "Condition": "WithRecorder",
            "DependsOn": ["AuditBucketPolicy"],
            "Properties": {
                "S3BucketName": reference("AuditBucket"),
                "S3KmsKeyArn": get_att("AuditKey", "Arn"),
                "ConfigSnapshotDeliveryProperties": { "DeliveryFrequency": "TwentyFour_Hours" },
            },
        }),
    );
    // Rules need a recorder; when this stack makes it, they wait for it
    // (a DependsOn cannot name a resource whose condition is false).
    resources.insert(
        "RecorderReady".into(),
        json!({
            "Type": "AWS::CloudFormation::WaitConditionHandle",
            "Metadata": {
                "Recorder": { "Fn::If": ["WithRecorder", reference("ConfigRecorder"), ""] },
                "Delivery": { "Fn::If": ["WithRecorder", reference("ConfigDelivery"), ""] },
            },
        }),
    );

    for (suffix, identifier, scope, parameters) in managed_rules() {
        let mut properties = json!({
            "ConfigRuleName": format!("bems-{cell}-{suffix}"),
            "Source": { "Owner": "AWS", "SourceIdentifier": identifier },
        });
        match scope {
            Some(scope) => properties["Scope"] = scope,
            None => properties["MaximumExecutionFrequency"] = json!("TwentyFour_Hours"),
        }
        if let Some(parameters) = parameters {
            properties["InputParameters"] = parameters;
        }
        resources.insert(
            format!("Rule{}", pascal_words(suffix)),
            json!({ "Type": "AWS::Config::ConfigRule", "DependsOn": ["RecorderReady"], "Properties": properties }),
        );
    }
    for (name, resource_type, policy) in guard_rules(spec) {
        let logical = format!("Rule{}", pascal_words(name.trim_start_matches(&format!("bems-{cell}-"))));
        resources.insert(
            logical,
            json!({
                "Type": "AWS::Config::ConfigRule",
                "DependsOn": ["RecorderReady"],
                "Properties": {
                    "ConfigRuleName": name,
                    "Scope": { "ComplianceResourceTypes": [resource_type] },
                    "Source": {
                        "Owner": "CUSTOM_POLICY",
                        "SourceDetails": [
                            { "EventSource": "aws.config", "MessageType": "ConfigurationItemChangeNotification" },
                            { "EventSource": "aws.config", "MessageType": "OversizedConfigurationItemChangeNotification" },
                        ],
                        "CustomPolicyDetails": { "PolicyRuntime": "guard-2.x.x", "PolicyText": policy },
                    },
                },
            }),
        );
    }

    monitoring_access(spec, &mut resources, &mut outputs);
    outputs.insert("AuditBucketName".into(), json!({ "Value": reference("AuditBucket") }));

    json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": format!(
            "BEMS cell {cell}: optional security stack (audit trail, Config rules, cross-account monitoring). Generated by `bems template`; do not edit."
        ),
        "Parameters": {
            "CreateTrail": {
                "Type": "String",
                "Default": "true",
                "AllowedValues": ["true", "false"],
                "Description": "false when an organization or account trail already records management events in every Region.",
            },
            "ConfigRecorderSource": {
                "Type": "String",
                "AllowedValues": ["create", "existing"],
                "Description": "Region-wide: the Config rules need a configuration recorder (AWS Config refuses a rule without one). create: this stack makes one, recording the rules' resource types (an account and Region allow one: choose it only where `aws configservice describe-configuration-recorders` lists none). existing: one already runs (Control Tower, an organization, another cell's security stack).",
            },
            "AuditRetentionDays": {
                "Type": "Number",
                "Default": 2_557,
                "MinValue": 1,
                "Description": "Days the trail's and Config's files are kept (default seven years).",
            },
            "MonitoringAccountId": {
                "Type": "String",
                "Default": "",
                "AllowedPattern": "^([0-9]{12})?$",
                "Description": "The central monitoring account that may read this cell; empty: no monitoring role.",
            },
            "MonitoringExternalId": {
                "Type": "String",
                "Default": "",
                "NoEcho": true,
                "AllowedPattern": "^([A-Za-z0-9+=,.@:/_-]{16,1224})?$",
                "Description": "The external id the monitoring account must present (16 characters or more); required with MonitoringAccountId.",
            },
            "MonitoringSinkArn": {
                "Type": "String",
                "Default": "",
                "Description": "A CloudWatch Observability Access Manager sink in the monitoring account; empty: no link.",
            },
        },
        "Conditions": {
            "WithTrail": { "Fn::Equals": [reference("CreateTrail"), "true"] },
            "WithRecorder": { "Fn::Equals": [reference("ConfigRecorderSource"), "create"] },
            "WithMonitoringRole": { "Fn::And": [
                { "Fn::Not": [{ "Fn::Equals": [reference("MonitoringAccountId"), ""] }] },
                { "Fn::Not": [{ "Fn::Equals": [reference("MonitoringExternalId"), ""] }] },
            ] },
            "WithSink": { "Fn::Not": [{ "Fn::Equals": [reference("MonitoringSinkArn"), ""] }] },
        },
        "Resources": resources,
        "Outputs": outputs,
    })
}

/// The read-only role a central monitoring account assumes, and the OAM link.
fn monitoring_access(spec: &CellSpec, resources: &mut BTreeMap<String, Value>, outputs: &mut BTreeMap<String, Value>) {
    let cell = spec.cell_id().as_str();
    let here = "${AWS::Partition}:{service}:${AWS::Region}:${AWS::AccountId}";
    let arn = |service: &str, rest: &str| sub(&format!("arn:{}:{rest}", here.replace("{service}", service)));
    let database = spec.timestream_database();
    resources.insert(
        "MonitoringRole".into(),
        json!({
            "Type": "AWS::IAM::Role",
            "Condition": "WithMonitoringRole",
            "Properties": {
                "RoleName": format!("bems-{cell}-monitoring-read"),
                "Description": format!("Read-only view of BEMS cell {cell} for the central monitoring account."),
                "MaxSessionDuration": 3_600,
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [{
                        "Effect": "Allow",
                        "Principal": { "AWS": sub("arn:${AWS::Partition}:iam::${MonitoringAccountId}:root") },
                        "Action": "sts:AssumeRole",
                        "Condition": { "StringEquals": { "sts:ExternalId": reference("MonitoringExternalId") } },
                    }],
                },
                "Policies": [{
                    "PolicyName": "read-the-cell",
                    "PolicyDocument": {
                        "Version": "2012-10-17",
                        "Statement": [
                            {
                                "Sid": "Metrics",
                                "Effect": "Allow",
                                // Metric reads take no resource.
                                "Action": ["cloudwatch:GetMetricData", "cloudwatch:GetMetricStatistics", "cloudwatch:ListMetrics"],
                                "Resource": "*",
                            },
                            {
                                "Sid": "Alarms",
                                "Effect": "Allow",
                                "Action": ["cloudwatch:DescribeAlarms", "cloudwatch:DescribeAlarmHistory"],
                                "Resource": arn("cloudwatch", &format!("alarm:bems-{cell}-*")),
                            },
                            {
                                "Sid": "Dashboard",
                                "Effect": "Allow",
                                "Action": "cloudwatch:GetDashboard",
                                "Resource": sub(&format!("arn:${{AWS::Partition}}:cloudwatch::${{AWS::AccountId}}:dashboard/bems-{cell}")),
                            },
                            {
                                "Sid": "Logs",
                                "Effect": "Allow",
                                "Action": ["logs:FilterLogEvents", "logs:GetLogEvents", "logs:DescribeLogStreams", "logs:StartQuery"],
                                "Resource": [
                                    arn("logs", &format!("log-group:/aws/lambda/bems-{cell}-*")),
                                    arn("logs", &format!("log-group:/bems/{cell}/*")),
                                ],
                            },
                            {
                                "Sid": "LogQueries",
                                "Effect": "Allow",
                                // Query results and log group listing take no resource.
                                "Action": ["logs:GetQueryResults", "logs:DescribeLogGroups"],
                                "Resource": "*",
                            },
                            {
                                "Sid": "Queues",
                                "Effect": "Allow",
                                // Depths and ages; no message reads (invoice data stays in the cell's account).
                                "Action": ["sqs:GetQueueUrl", "sqs:GetQueueAttributes"],
                                "Resource": arn("sqs", &format!("bems-{cell}-*")),
                            },
                            {
                                "Sid": "History",
                                "Effect": "Allow",
                                "Action": "timestream:Select",
                                "Resource": arn("timestream", &format!("database/{database}/table/{}", bems_core::contract::TIMESTREAM_TABLE)),
                            },
                            {
                                "Sid": "TimestreamEndpoints",
                                "Effect": "Allow",
                                "Action": "timestream:DescribeEndpoints",
                                "Resource": "*",
                            },
                        ],
                    },
                }],
            },
        }),
    );
    outputs.insert(
        "MonitoringRoleArn".into(),
        json!({ "Condition": "WithMonitoringRole", "Value": get_att("MonitoringRole", "Arn") }),
    );
    resources.insert(
        "MonitoringLink".into(),
        json!({
            "Type": "AWS::Oam::Link",
            "Condition": "WithSink",
            "Properties": {
                "SinkIdentifier": reference("MonitoringSinkArn"),
                "LabelTemplate": format!("bems-{cell} ($AccountName)"),
                "ResourceTypes": ["AWS::CloudWatch::Metric", "AWS::Logs::LogGroup", "AWS::XRay::Trace"],
            },
        }),
    );
}

/// Every public access block on.
pub(super) fn private_bucket() -> Value {
    json!({
        "BlockPublicAcls": true,
        "BlockPublicPolicy": true,
        "IgnorePublicAcls": true,
        "RestrictPublicBuckets": true,
    })
}

/// Refuses every request to `bucket` that is not over TLS.
pub(super) fn tls_only(bucket: &str) -> Value {
    json!({
        "Sid": "tls-only",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [get_att(bucket, "Arn"), sub(&format!("${{{bucket}.Arn}}/*"))],
        "Condition": { "Bool": { "aws:SecureTransport": "false" } },
    })
}

/// `queues-have-a-dlq` → `QueuesHaveADlq`.
fn pascal_words(text: &str) -> String {
    text.split('-').map(capitalized).collect()
}
