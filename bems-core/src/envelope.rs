//! The AWS envelopes around an invoice event, and decoding a message body
//! whatever shape it arrives in.
//!
//! A consumer's SQS message body is one of:
//!
//! - the invoice event itself (raw delivery of a message published as is);
//! - an EventBridge event whose `detail` is the invoice event (an EventBridge
//!   rule targeting a queue, or SNS raw delivery of what EventBridge sent);
//! - an SNS notification envelope whose `Message` holds either of the above
//!   (SNS to SQS without raw delivery).
//!
//! [`decode_body`] accepts all of them and says which it saw.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::event::InvoiceEvent;
use crate::validate::Validator;
use crate::violation::Violations;

/// The EventBridge `source` of every invoice event.
pub const EVENT_SOURCE: &str = "bems.invoices";

/// The EventBridge `detail-type` of every invoice event.
pub const DETAIL_TYPE: &str = "Invoice Status Changed";

/// One entry of an EventBridge `PutEvents` request, as the producer builds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutEventsEntry {
    /// `bems.invoices`.
    pub source: String,
    /// `Invoice Status Changed`.
    pub detail_type: String,
    /// The invoice event, as JSON text.
    pub detail: String,
    /// Name or ARN of the cell's bus.
    pub event_bus_name: String,
    /// ARNs the event concerns; unused by BEMS, kept for the size rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
}

impl PutEventsEntry {
    /// The entry for `event` on `bus`.
    pub fn for_event(event: &InvoiceEvent, bus: &str) -> PutEventsEntry {
        PutEventsEntry {
            source: EVENT_SOURCE.to_owned(),
            detail_type: DETAIL_TYPE.to_owned(),
            detail: event.to_json(),
            event_bus_name: bus.to_owned(),
            resources: Vec::new(),
        }
    }

    /// The entry's size as EventBridge counts it against the request limit:
    /// the UTF-8 bytes of `Source`, `DetailType`, `Detail` and each resource
    /// (no `Time` is set, which would add 14 bytes). See "Calculating
    /// PutEvents event entry size" in the EventBridge user guide.
    pub fn size(&self) -> usize {
        self.source.len()
            + self.detail_type.len()
            + self.detail.len()
            + self.resources.iter().map(String::len).sum::<usize>()
    }
}

/// An event as EventBridge delivers it to a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBridgeEvent<D> {
    /// Always `"0"`.
    pub version: String,
    /// EventBridge's id of the event (not the invoice event's `eventId`).
    pub id: String,
    /// The `DetailType` of the entry.
    #[serde(rename = "detail-type")]
    pub detail_type: String,
    /// The `Source` of the entry.
    pub source: String,
    /// The account of the bus.
    pub account: String,
    /// When EventBridge received the event, RFC 3339.
    pub time: String,
    /// The Region of the bus.
    pub region: String,
    /// The entry's resources.
    #[serde(default)]
    pub resources: Vec<String>,
    /// Set when the event is a replay from an archive: the replay's name.
    #[serde(rename = "replay-name", default, skip_serializing_if = "Option::is_none")]
    pub replay_name: Option<String>,
    /// The payload.
    pub detail: D,
}

/// An SNS notification as SNS delivers it to an SQS queue without raw
/// message delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SnsNotification {
    /// `Notification` for messages (confirmations have other types).
    #[serde(rename = "Type")]
    pub kind: String,
    /// SNS's id of the message.
    pub message_id: String,
    /// FIFO topics only: the message's sequence number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence_number: Option<String>,
    /// The topic that published it.
    pub topic_arn: String,
    /// The subject, if the publisher set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The published message: the text this envelope wraps.
    pub message: String,
    /// When SNS published it, RFC 3339.
    pub timestamp: String,
    /// Signature scheme version (absent on some FIFO deliveries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_version: Option<String>,
    /// Base64 signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Where the signing certificate is.
    #[serde(rename = "SigningCertURL", default, skip_serializing_if = "Option::is_none")]
    pub signing_cert_url: Option<String>,
    /// Where to unsubscribe.
    #[serde(rename = "UnsubscribeURL", default, skip_serializing_if = "Option::is_none")]
    pub unsubscribe_url: Option<String>,
    /// Subscription confirmations only: the confirmation token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Subscription confirmations only: where to confirm.
    #[serde(rename = "SubscribeURL", default, skip_serializing_if = "Option::is_none")]
    pub subscribe_url: Option<String>,
    /// The message attributes, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub message_attributes: BTreeMap<String, SnsMessageAttribute>,
}

/// One SNS message attribute in a notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnsMessageAttribute {
    /// `String`, `Number`, `String.Array` or `Binary`.
    #[serde(rename = "Type")]
    pub data_type: String,
    /// The value as text.
    #[serde(rename = "Value")]
    pub value: String,
}

/// Which envelope a body came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    /// The invoice event itself.
    Raw,
    /// An EventBridge event.
    EventBridge,
    /// An SNS notification wrapping the invoice event.
    Sns,
    /// An SNS notification wrapping an EventBridge event.
    SnsEventBridge,
}

/// A decoded message body: the event and what its envelopes said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The invoice event.
    pub event: InvoiceEvent,
    /// The envelope it came in.
    pub shape: Shape,
    /// EventBridge's event id, when it came through EventBridge.
    pub eventbridge_id: Option<String>,
    /// When EventBridge received it (the envelope's `time`), when it came
    /// through EventBridge.
    pub eventbridge_time: Option<String>,
    /// The archive replay's name, when it is a replayed event.
    pub replay_name: Option<String>,
    /// SNS's message id, when it came in an SNS envelope.
    pub sns_message_id: Option<String>,
}

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body is not JSON, or an envelope is malformed.
    #[error("{shape} envelope: {reason}")]
    Envelope {
        /// Which envelope (`body`, `SNS notification`, `EventBridge event`).
        shape: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An SNS message that is not a notification (a subscription
    /// confirmation, say) reached a consumer.
    #[error("SNS message of type '{0}' carries no invoice event")]
    UnexpectedSnsType(String),
    /// The envelope is fine; the invoice event in it is not.
    #[error("invalid invoice event: {0}")]
    Invalid(#[from] Violations),
}

/// Decodes a message body in any of the three shapes (see the module docs)
/// and validates the invoice event with `validator`.
pub fn decode_body(body: &str, validator: &Validator) -> Result<Delivery, DecodeError> {
    decode(body, validator, true)
}

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(rename = "Type", default, borrow)]
    sns_type: Option<&'a RawValue>,
    #[serde(rename = "TopicArn", default, borrow)]
    topic_arn: Option<&'a RawValue>,
    #[serde(rename = "detail-type", default, borrow)]
    detail_type: Option<&'a RawValue>,
    #[serde(default, borrow)]
    detail: Option<&'a RawValue>,
}

fn decode(body: &str, validator: &Validator, allow_sns: bool) -> Result<Delivery, DecodeError> {
    let probe: Probe<'_> = match serde_json::from_str(body) {
        Ok(p) => p,
        // Not an object, or not JSON: let the validator say exactly what is wrong.
        Err(_) => {
            return Err(validator.parse(body.as_bytes()).err().map_or_else(
                || DecodeError::Envelope { shape: "body", reason: "not a JSON object".into() },
                DecodeError::Invalid,
            ));
        }
    };
    if allow_sns && probe.sns_type.is_some() && probe.topic_arn.is_some() {
        let sns: SnsNotification = serde_json::from_str(body)
            .map_err(|e| DecodeError::Envelope { shape: "SNS notification", reason: e.to_string() })?;
        if sns.kind != "Notification" {
            return Err(DecodeError::UnexpectedSnsType(sns.kind));
        }
        let inner = decode(&sns.message, validator, false)?;
        return Ok(Delivery {
            shape: if inner.shape == Shape::EventBridge { Shape::SnsEventBridge } else { Shape::Sns },
            sns_message_id: Some(sns.message_id),
            ..inner
        });
    }
    if probe.detail_type.is_some() && probe.detail.is_some() {
        let eb: EventBridgeEvent<&RawValue> = serde_json::from_str(body)
            .map_err(|e| DecodeError::Envelope { shape: "EventBridge event", reason: e.to_string() })?;
        let event = validator.parse(eb.detail.get().as_bytes())?;
        return Ok(Delivery {
            event,
            shape: Shape::EventBridge,
            eventbridge_id: Some(eb.id),
            eventbridge_time: Some(eb.time),
            replay_name: eb.replay_name,
            sns_message_id: None,
        });
    }
    let event = validator.parse(body.as_bytes())?;
    Ok(Delivery {
        event,
        shape: Shape::Raw,
        eventbridge_id: None,
        eventbridge_time: None,
        replay_name: None,
        sns_message_id: None,
    })
}
