//! The routing resources: the cell key, queues and their policies, and
//! the nested stack of one stage's rules.

use std::collections::BTreeMap;

use bems_core::Stage;
use bems_core::routing::CellSpec;
use serde_json::{Value, json};

use super::*;

/// The cell's key: the account administers it (and grants its functions
/// use through their roles); the services that write to the cell's
/// encrypted queues, topics and log groups may use it, each statement in
/// the form the service's own guide gives. Which queue or topic a service
/// may deliver to is decided by that resource's policy (`aws:SourceArn`
/// conditions naming this cell's rules, topics and alarms): the key
/// statements only let the service encrypt what it was allowed to send.
pub(super) fn cell_key() -> Value {
    rotating_key(
        "BEMS: encrypts the cell's topics, queues and logs.",
        json!([
            // EventBridge rules to the encrypted route queues, the bus DLQ
            // and the unrouted queue. EventBridge user guide, "Troubleshooting
            // Amazon EventBridge: my events are not delivered to the target
            // Amazon SQS queue" (eb-troubleshooting.html#eb-sqs-encrypted):
            // no condition is shown there.
            {
                "Sid": "rules-deliver",
                "Effect": "Allow",
                "Principal": { "Service": "events.amazonaws.com" },
                "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
                "Resource": "*",
            },
            // SNS topics to the encrypted stage and status queues. SNS
            // developer guide, "Configuring AWS KMS permissions for Amazon
            // SQS subscriptions" (sns-enable-encryption-for-topic-sqs-queue-subscriptions.html).
            {
                "Sid": "topics-deliver",
                "Effect": "Allow",
                "Principal": { "Service": "sns.amazonaws.com" },
                "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
                "Resource": "*",
            },
            // CloudWatch alarms to the encrypted alert topics. AWS Knowledge
            // Center, "Why didn't I receive an SNS notification for my
            // CloudWatch alarm trigger?" (knowledge-center/cloudwatch-configure-alarm-sns).
            {
                "Sid": "alarms-notify",
                "Effect": "Allow",
                "Principal": { "Service": "cloudwatch.amazonaws.com" },
                "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
                "Resource": "*",
            },
            // CloudWatch Logs encrypting the cell's log groups. CloudWatch
            // Logs user guide, "Encrypt log data in CloudWatch Logs using
            // AWS KMS" (encrypt-log-data-kms.html): the encryption context
            // names the log group, limited here to this account's.
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
        ]),
    )
}

/// The tags of a queue of the cell: `bems:cell`, and `bems:role`
/// (`source` for queues something consumes, `dead-letter` for DLQs), which
/// scopes the security stack's dead-letter-queue rule to the former.
pub(super) fn queue_tags(cell: &str, role: &str) -> Value {
    json!([{ "Key": "bems:cell", "Value": cell }, { "Key": "bems:role", "Value": role }])
}

/// A FIFO queue of the cell, encrypted with the cell key.
pub(super) fn fifo_queue(name: &str, extra: Value) -> Value {
    let mut properties = json!({
        "QueueName": name,
        "FifoQueue": true,
        "ContentBasedDeduplication": true,
        // High-throughput FIFO: quotas per message group, not per queue.
        // The status queue takes one SNS delivery (a SendMessage) per event,
        // 1,400/s at the growth peak, far above a queue-wide FIFO quota of
        // 300 calls/s. Deduplication per group is enough: a duplicate of an
        // event always carries the same group.
        "DeduplicationScope": "messageGroup",
        "FifoThroughputLimit": "perMessageGroupId",
        "KmsMasterKeyId": reference("CellKey"),
        "KmsDataKeyReusePeriodSeconds": 3600,
    });
    if let (Some(p), Value::Object(extra)) = (properties.as_object_mut(), extra) {
        p.extend(extra);
    }
    json!({ "Type": "AWS::SQS::Queue", "Properties": properties })
}

/// A dead-letter queue of `cell`: kept 14 days, the most SQS allows, and
/// kept when the stack goes.
pub(super) fn dlq(cell: &str, name: &str) -> Value {
    retained(fifo_queue(name, json!({ "MessageRetentionPeriod": 1_209_600, "Tags": queue_tags(cell, "dead-letter") })))
}

/// A standard queue of `cell` that holds what could not go where it was
/// meant to (the bus DLQ, the unrouted queue): like [`dlq`], without FIFO,
/// since EventBridge sends to it without a message group.
pub(super) fn standard_dlq(cell: &str, name: &str) -> Value {
    retained(json!({
        "Type": "AWS::SQS::Queue",
        "Properties": {
            "QueueName": name,
            "KmsMasterKeyId": reference("CellKey"),
            "KmsDataKeyReusePeriodSeconds": 3600,
            "MessageRetentionPeriod": 1_209_600,
            "Tags": queue_tags(cell, "dead-letter"),
        },
    }))
}

/// The one target of a rule of the cell: `arn`, with the message group
/// `group` for a FIFO queue, dead-lettering to `dlq` after a day of
/// retries (a target outage shorter than that loses nothing).
pub(super) fn target(arn: &Value, group: Option<&str>, dlq: &Value) -> Value {
    let mut target = json!({
        "Id": bems_core::contract::RULE_TARGET_ID,
        "Arn": arn,
        "DeadLetterConfig": { "Arn": dlq },
        "RetryPolicy": { "MaximumRetryAttempts": 185, "MaximumEventAgeInSeconds": 86_400 },
    });
    if let Some(group) = group {
        target["SqsParameters"] = json!({ "MessageGroupId": group });
    }
    target
}

/// A stage, route or status queue of `cell`, dead-lettering to `dlq_id`.
pub(super) fn queue(cell: &str, name: &str, dlq_id: &str) -> Value {
    fifo_queue(
        name,
        json!({
            "Tags": queue_tags(cell, "source"),
            "VisibilityTimeout": reference("VisibilityTimeoutSeconds"),
            "RedrivePolicy": {
                "deadLetterTargetArn": get_att(dlq_id, "Arn"),
                "maxReceiveCount": reference("MaxReceiveCount"),
            },
        }),
    )
}

/// A resource policy letting this cell's rules (and nothing else) do
/// `action` on `resource`.
pub(super) fn rules_may(action: &str, resource: &Value, rules_arn: &str) -> Value {
    crate::policy::rules_may(action, resource, &sub(rules_arn))
}

/// Lets `topics` (and nothing else) send to the queue `queue_id`.
pub(super) fn queue_policy(queue_id: &str, topics: &[Value]) -> Value {
    json!({
        "Type": "AWS::SQS::QueuePolicy",
        "Properties": {
            "Queues": [reference(queue_id)],
            "PolicyDocument": crate::policy::topics_may_send(&get_att(queue_id, "Arn"), &Value::from(topics.to_vec())),
        },
    })
}

/// One stage's rules: one per partition, each targeting the stage's route
/// queue with the partition's static message group.
pub(super) fn rules_stack(spec: &CellSpec, stage: Stage) -> Value {
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
                    "Targets": [target(
                        &reference("RouteQueueArn"),
                        Some(&rule.message_group_id),
                        &reference("DeadLetterQueueArn"),
                    )],
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
            "RouteQueueArn": { "Type": "String", "Description": format!("The {stage} SQS FIFO route queue.") },
            "DeadLetterQueueArn": { "Type": "String", "Description": "Where EventBridge puts events it cannot deliver." },
        },
        "Resources": resources,
    })
}
