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
///
/// An EventBridge event, the shape the stage queues carry, is read in one
/// pass, envelope and event together; anything irregular about it is read
/// again by the thorough path, which says exactly what is wrong.
pub fn decode_body(body: &str, validator: &Validator) -> Result<Delivery, DecodeError> {
    // `"detail-type"` with its quotes cannot occur inside an escaped SNS
    // message, so other shapes go straight to the thorough path, as do
    // bodies over the event size limit (it reports them).
    if body.len() <= crate::validate::MAX_EVENT_BYTES
        && body.contains("\"detail-type\"")
        && let Some(delivery) = fast_eventbridge(body, validator)
    {
        return Ok(delivery);
    }
    decode(body, validator, true)
}

/// The thorough path alone: what [`decode_body`] falls back to, and what the
/// fuzz targets check it against.
#[doc(hidden)]
pub fn decode_body_thorough(body: &str, validator: &Validator) -> Result<Delivery, DecodeError> {
    decode(body, validator, true)
}

/// A valid invoice event in an EventBridge envelope, read in one pass, or
/// `None` for the thorough path. Accepts exactly what that path accepts as
/// an EventBridge event: every envelope member present with its type
/// (unknown ones ignored, a duplicate refused), no SNS `Type` and
/// `TopicArn` pair, and a valid event in `detail`.
fn fast_eventbridge(body: &str, validator: &Validator) -> Option<Delivery> {
    let mut de = serde_json::Deserializer::from_str(body);
    let read =
        serde::de::DeserializeSeed::deserialize(FastEnvelope { detail: validator.event_seed() }, &mut de).ok()?;
    de.end().ok()?;
    if read.sns_type && read.topic_arn {
        return None;
    }
    let event = validator.finish(&read.detail, chrono::Utc::now())?;
    Some(Delivery {
        event,
        shape: Shape::EventBridge,
        eventbridge_id: Some(read.id),
        eventbridge_time: Some(read.time),
        replay_name: read.replay_name,
        sns_message_id: None,
    })
}

/// The seed of [`fast_eventbridge`]'s one pass.
struct FastEnvelope {
    detail: crate::validate::ObjectSeed,
}

/// What that pass read.
struct FastRead<'a> {
    id: String,
    time: String,
    replay_name: Option<String>,
    sns_type: bool,
    topic_arn: bool,
    detail: crate::validate::Fields<'a>,
}

impl<'de> serde::de::DeserializeSeed<'de> for FastEnvelope {
    type Value = FastRead<'de>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<FastRead<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FastEnvelope {
    type Value = FastRead<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an EventBridge event")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<FastRead<'de>, A::Error> {
        use crate::validate::Key;
        use serde::de::Error;
        // The members `EventBridgeEvent` requires, as strings.
        const STRINGS: [&str; 7] = ["version", "id", "detail-type", "source", "account", "time", "region"];
        let mut strings: [Option<Key<'de>>; 7] = Default::default();
        let (mut resources, mut replay_name, mut detail) = (false, None, None);
        // `Some(present and not null)` once seen: the thorough path's SNS test.
        let (mut sns_type, mut topic_arn) = (None, None);
        let duplicate = || A::Error::custom("duplicate member");
        while let Some(Key(key)) = map.next_key()? {
            if let Some(i) = STRINGS.iter().position(|n| *n == key) {
                if strings[i].is_some() {
                    return Err(duplicate());
                }
                strings[i] = Some(map.next_value()?);
                continue;
            }
            match key.as_ref() {
                "resources" if resources => return Err(duplicate()),
                "resources" => {
                    map.next_value::<Vec<Key<'de>>>()?;
                    resources = true;
                }
                "replay-name" if replay_name.is_some() => return Err(duplicate()),
                "replay-name" => replay_name = Some(map.next_value::<Option<Key<'de>>>()?),
                "detail" if detail.is_some() => return Err(duplicate()),
                "detail" => detail = Some(map.next_value_seed(self.detail)?),
                "Type" if sns_type.is_some() => return Err(duplicate()),
                "Type" => sns_type = Some(map.next_value::<Option<serde::de::IgnoredAny>>()?.is_some()),
                "TopicArn" if topic_arn.is_some() => return Err(duplicate()),
                "TopicArn" => topic_arn = Some(map.next_value::<Option<serde::de::IgnoredAny>>()?.is_some()),
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        let [Some(_), Some(id), Some(_), Some(_), Some(_), Some(time), Some(_)] = strings else {
            return Err(A::Error::custom("missing member"));
        };
        Ok(FastRead {
            id: id.0.into_owned(),
            time: time.0.into_owned(),
            replay_name: replay_name.flatten().map(|k| k.0.into_owned()),
            sns_type: sns_type == Some(true),
            topic_arn: topic_arn == Some(true),
            detail: detail.ok_or_else(|| A::Error::missing_field("detail"))?,
        })
    }
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

/// At most this many entries per `PutEvents` call (an EventBridge limit).
pub const MAX_ENTRIES_PER_CALL: usize = 10;

/// At most this many bytes of entries per call, counted as EventBridge
/// counts them ([`PutEventsEntry::size`]). 256 KiB, the limit every Region
/// has enforced; larger limits make this merely conservative.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// Splits `items` into runs of at most [`MAX_ENTRIES_PER_CALL`] items and
/// [`MAX_REQUEST_BYTES`] bytes, keeping order. SNS `PublishBatch` and SQS
/// `SendMessageBatch` have the same two limits as `PutEvents`.
pub fn batches(items: &[usize], size: impl Fn(usize) -> usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut bytes = 0;
    for &item in items {
        let s = size(item);
        let full = out.last().is_none_or(|b| b.len() == MAX_ENTRIES_PER_CALL || bytes + s > MAX_REQUEST_BYTES);
        if full {
            out.push(Vec::new());
            bytes = 0;
        }
        if let Some(b) = out.last_mut() {
            b.push(item);
        }
        bytes += s;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ValidationOptions;

    #[test]
    fn a_valid_eventbridge_event_is_read_in_one_pass() {
        // The equivalence with the thorough path is tests/fast_path.rs;
        // this checks the fast path is really taken.
        let body = include_str!("../fixtures/example-eventbridge-event-invoice.json");
        let v = Validator::new(ValidationOptions::consumer());
        let fast = fast_eventbridge(body, &v).expect("one pass");
        assert_eq!(Ok(fast), decode_body_thorough(body, &v));
        let replayed = include_str!("../fixtures/example-eventbridge-event-replayed.json");
        assert!(fast_eventbridge(replayed, &v).and_then(|d| d.replay_name).is_some());
    }

    #[test]
    fn batches_respect_the_byte_limit() {
        let items: Vec<usize> = (0..5).collect();
        let b = batches(&items, |_| MAX_REQUEST_BYTES / 2);
        assert_eq!(b, vec![vec![0, 1], vec![2, 3], vec![4]]);
        let b = batches(&(0..23).collect::<Vec<_>>(), |_| 100);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), vec![10, 10, 3]);
    }
}
