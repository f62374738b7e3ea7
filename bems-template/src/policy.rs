//! The resource policies that let exactly the cell's own services talk.

use serde_json::{Value, json};

/// Lets the cell's SNS topics `topics` (and nothing else) send to `queue`.
pub(crate) fn topics_may_send(queue: &Value, topics: &Value) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "bems-topics",
            "Effect": "Allow",
            "Principal": { "Service": "sns.amazonaws.com" },
            "Action": "sqs:SendMessage",
            "Resource": queue,
            "Condition": { "ArnEquals": { "aws:SourceArn": topics } },
        }],
    })
}

/// Lets the cell's EventBridge rules (`rules`, an ARN pattern) and nothing
/// else do `action` on `resource`.
pub(crate) fn rules_may(action: &str, resource: &Value, rules: &Value) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "bems-rules",
            "Effect": "Allow",
            "Principal": { "Service": "events.amazonaws.com" },
            "Action": action,
            "Resource": resource,
            "Condition": { "ArnLike": { "aws:SourceArn": rules } },
        }],
    })
}
