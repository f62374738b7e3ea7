//! Parsing and validating the wire form of an [`InvoiceEvent`].
//!
//! The validator reads the JSON into borrowed raw slices, one per field
//! (`serde_json`'s `RawValue`), then decodes each field on its own. A field
//! that fails does not stop the others, so one call reports every problem:
//! wrong types, missing and unknown fields, formats, ranges, and the checks
//! that span several fields. Amounts are decoded from their raw digits, never
//! through a float.
//!
//! Two readers fill those slices. The fast one reads a well-formed event in
//! a single pass, nested objects included, and gives up at the first
//! irregularity (a duplicate member, an unknown one under
//! [`UnknownFields::Reject`], a nested member that is not an object); the
//! thorough one then reads the input again, member by member, and reports
//! everything. A valid event never takes the second; both decode fields
//! with the same code, and the fast path only ever returns an event the
//! thorough one returns too (the fuzz targets check that they agree).
//!
//! ```
//! use bems_core::{Code, Validator};
//!
//! let errors = Validator::default().parse(br#"{"eventId": 42}"#).unwrap_err();
//! assert!(errors.contains("eventId", Code::WrongType));
//! assert!(errors.contains("invoiceId", Code::Missing));
//! ```

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, NaiveDate, NaiveTime, TimeDelta, Utc};
use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::event::{InvoiceEvent, Metadata, NetDays, PaymentTerms, SCHEMA_VERSION, Vendor};
use crate::fields::{
    AccountId, CellId, CorrelationId, CountryCode, EventId, InvoiceId, Producer, Reason, Region, TaxId, VendorId,
    VendorName,
};
use crate::lifecycle::{Stage, Status, TransitionError, check_transition};
use crate::money::{Amount, Currency};
use crate::partition::{Partition, PartitionCount};
use crate::violation::{Code, FieldError, Violation, Violations};

/// The largest event accepted, in bytes: SNS's 256 KB message limit, the
/// smallest payload limit on the event's path.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// The JSON Schema pattern of an RFC 3339 UTC timestamp as BEMS writes it.
pub const TIMESTAMP_PATTERN: &str =
    "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?Z$";

/// The JSON Schema pattern of a calendar date.
pub const DATE_PATTERN: &str = "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$";

/// What to do with fields the schema does not define.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownFields {
    /// Report each as `unknown_field` (the default, and what the API does):
    /// a typo in an optional field must not pass silently.
    #[default]
    Reject,
    /// Drop them. For consumers that must read events from producers on a
    /// newer minor version of the schema.
    Ignore,
}

/// Validator settings.
#[derive(Debug, Clone)]
pub struct ValidationOptions {
    /// Policy for undefined fields.
    pub unknown_fields: UnknownFields,
    /// How far `occurredAt` may be ahead of the validator's clock (producer
    /// clock skew); `None` skips the check. Default: 5 minutes, well inside
    /// Timestream's 15-minute limit for future records.
    pub max_future_skew: Option<TimeDelta>,
    /// When set, `metadata.partition` must exist in a cell of this many
    /// partitions and be the invoice's partition.
    pub partitions: Option<PartitionCount>,
}

impl Default for ValidationOptions {
    fn default() -> ValidationOptions {
        ValidationOptions {
            unknown_fields: UnknownFields::Reject,
            max_future_skew: Some(TimeDelta::minutes(5)),
            partitions: None,
        }
    }
}

impl ValidationOptions {
    /// What consumers of delivered events use: unknown fields are ignored
    /// (producers may be on a newer minor schema version) and the clock is
    /// not checked (redelivered and replayed events are old by design).
    pub fn consumer() -> ValidationOptions {
        ValidationOptions { unknown_fields: UnknownFields::Ignore, max_future_skew: None, partitions: None }
    }

    /// What consumers of a cell of `partitions` partitions use: as
    /// [`ValidationOptions::consumer`], and `metadata.partition` must be
    /// the invoice's own. The rules route by the partition the producer
    /// wrote; one that is in range but not `xxh64(invoiceId) mod P + 1`
    /// (which no rule or API model can compute) would put the invoice's
    /// events in another FIFO group than its others, out of order, so the
    /// consumer refuses it for good, with the reason.
    pub fn consumer_in(partitions: PartitionCount) -> ValidationOptions {
        ValidationOptions { partitions: Some(partitions), ..ValidationOptions::consumer() }
    }
}

/// Parses and validates invoice events.
#[derive(Debug, Clone, Default)]
pub struct Validator {
    options: ValidationOptions,
}

impl Validator {
    /// A validator with these options.
    pub fn new(options: ValidationOptions) -> Validator {
        Validator { options }
    }

    /// The options in force.
    pub fn options(&self) -> &ValidationOptions {
        &self.options
    }

    /// Parses `bytes`, checking the clock against the system time.
    pub fn parse(&self, bytes: &[u8]) -> Result<InvoiceEvent, Violations> {
        self.parse_at(bytes, Utc::now())
    }

    /// Parses `bytes` as of `now`. Returns the event, or every problem found.
    pub fn parse_at(&self, bytes: &[u8], now: DateTime<Utc>) -> Result<InvoiceEvent, Violations> {
        if bytes.len() <= MAX_EVENT_BYTES {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            if let Ok(fields) = serde::de::DeserializeSeed::deserialize(self.event_seed(), &mut de)
                && de.end().is_ok()
                && let Some(event) = self.finish(&fields, now)
            {
                return Ok(event);
            }
        }
        self.parse_thorough(bytes, now)
    }

    /// The thorough reader alone, without the single-pass fast path: what
    /// [`Validator::parse_at`] falls back to, and what the fuzz targets check
    /// it against.
    #[doc(hidden)]
    pub fn parse_thorough(&self, bytes: &[u8], now: DateTime<Utc>) -> Result<InvoiceEvent, Violations> {
        let mut reader = Reader { found: Vec::new(), unknown: self.options.unknown_fields };
        let event = reader.event(bytes, &self.options, now);
        match (event, Violations::new(reader.found)) {
            (Some(event), None) => Ok(event),
            (_, Some(found)) => Err(found),
            // Every path that yields no event records why.
            (None, None) => Err(one("$", Code::InvalidJson, "the event could not be decoded")),
        }
    }
}

impl Validator {
    /// Reads one event object in a single pass (see the module docs).
    pub(crate) fn event_seed(&self) -> ObjectSeed {
        ObjectSeed { shape: &EVENT, reject_unknown: self.options.unknown_fields == UnknownFields::Reject }
    }

    /// The event in `fields` (from [`Validator::event_seed`]) when it has
    /// no problem at all; `None` sends the caller to the thorough reader.
    pub(crate) fn finish(&self, fields: &Fields<'_>, now: DateTime<Utc>) -> Option<InvoiceEvent> {
        let mut reader = Reader { found: Vec::new(), unknown: self.options.unknown_fields };
        let event = reader.convert(fields, &self.options, now);
        event.filter(|_| reader.found.is_empty())
    }
}

fn one(path: &str, code: Code, message: &str) -> Violations {
    Violations::new(vec![FieldError::new(code, message).at(path)]).unwrap_or_else(|| unreachable!())
}

/// The decoded fields, each `None` when it was missing or invalid. Shared
/// with [`InvoiceEvent::check`] so typed and parsed events pass the same
/// cross-field rules.
#[allow(clippy::option_option, reason = "absent (outer None) differs from present and null (inner None)")]
pub(crate) struct Parts<'e> {
    pub(crate) invoice_id: Option<&'e InvoiceId>,
    pub(crate) stage: Option<Stage>,
    pub(crate) status: Option<Status>,
    pub(crate) previous_status: Option<Option<Status>>,
    pub(crate) reason: Option<Option<&'e Reason>>,
    pub(crate) amount: Option<Amount>,
    pub(crate) currency: Option<Currency>,
    pub(crate) occurred_at: Option<DateTime<Utc>>,
    pub(crate) previous_occurred_at: Option<Option<DateTime<Utc>>>,
    pub(crate) submitted_at: Option<Option<DateTime<Utc>>>,
    pub(crate) issue_date: Option<NaiveDate>,
    pub(crate) net_days: Option<NetDays>,
    pub(crate) due_date: Option<Option<NaiveDate>>,
    pub(crate) partition: Option<Partition>,
}

/// The rules that involve more than one field. Each runs when the fields it
/// needs decoded, so a broken field elsewhere does not hide these problems.
pub(crate) fn cross_checks(p: &Parts<'_>, options: &ValidationOptions, now: DateTime<Utc>, found: &mut Vec<Violation>) {
    if let (Some(amount), Some(currency)) = (p.amount, p.currency)
        && let Err(e) = currency.check_amount(amount)
    {
        found.push(e.at("amount"));
    }
    if let (Some(stage), Some(status), Some(previous)) = (p.stage, p.status, p.previous_status)
        && let Err(e) = check_transition(previous, status, stage)
    {
        let path = if matches!(e, TransitionError::WrongStage { .. }) { "stage" } else { "status" };
        found.push(FieldError::new(Code::from(&e), e.to_string()).at(path));
    }
    timeline_checks(p, found);
    if p.status == Some(Status::Rejected) && p.reason == Some(None) {
        found.push(FieldError::new(Code::Missing, "is required when status is 'rejected'").at("reason"));
    }
    if let (Some(issue), Some(days), Some(Some(due))) = (p.issue_date, p.net_days, p.due_date) {
        let expected = days.due_date(issue);
        if due != expected {
            found.push(
                FieldError::new(Code::Mismatch, format!("must be issueDate + netDays = {expected}, got {due}"))
                    .at("paymentTerms.dueDate"),
            );
        }
    }
    if let (Some(at), Some(skew)) = (p.occurred_at, options.max_future_skew)
        && at > now + skew
    {
        let ahead = (at - now).num_seconds();
        found.push(
            FieldError::new(
                Code::InFuture,
                format!("is {ahead} s ahead of the validator's clock; at most {} s is tolerated", skew.num_seconds()),
            )
            .at("occurredAt"),
        );
    }
    if let (Some(partition), Some(count)) = (p.partition, options.partitions) {
        if !partition.fits(count) {
            found.push(
                FieldError::new(
                    Code::OutOfRange,
                    format!("the cell has {} partitions, got {}", count.get(), partition.get()),
                )
                .at("metadata.partition"),
            );
        } else if let Some(invoice) = p.invoice_id {
            let expected = Partition::for_invoice(invoice, count);
            if expected != partition {
                found.push(
                    FieldError::new(
                        Code::Mismatch,
                        format!(
                            "invoice '{invoice}' belongs to partition {} of {}, got {}",
                            expected.get(),
                            count.get(),
                            partition.get()
                        ),
                    )
                    .at("metadata.partition"),
                );
            }
        }
    }
}

/// The timestamps of one invoice's life run forwards: submitted, then the
/// previous status, then this one.
fn timeline_checks(p: &Parts<'_>, found: &mut Vec<Violation>) {
    let previous_at = p.previous_occurred_at.flatten();
    let submitted_at = p.submitted_at.flatten();
    if previous_at.is_some() && p.previous_status == Some(None) {
        found.push(
            FieldError::new(Code::Mismatch, "is set but previousStatus is not: a first event has no previous status")
                .at("previousOccurredAt"),
        );
    }
    let later = |field: &str, at: DateTime<Utc>, other: &str, than: DateTime<Utc>| {
        FieldError::new(
            Code::Mismatch,
            format!(
                "{} is after {other} {}",
                at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                than.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            ),
        )
        .at(field)
    };
    if let (Some(prev), Some(at)) = (previous_at, p.occurred_at)
        && prev > at
    {
        found.push(later("previousOccurredAt", prev, "occurredAt", at));
    }
    if let (Some(sub), Some(at)) = (submitted_at, p.occurred_at)
        && sub > at
    {
        found.push(later("submittedAt", sub, "occurredAt", at));
    } else if let (Some(sub), Some(prev)) = (submitted_at, previous_at)
        && sub > prev
    {
        found.push(later("submittedAt", sub, "previousOccurredAt", prev));
    }
}

const EVENT_FIELDS: &[&str] = &[
    "eventId",
    "invoiceId",
    "stage",
    "status",
    "previousStatus",
    "reason",
    "amount",
    "currency",
    "occurredAt",
    "previousOccurredAt",
    "submittedAt",
    "issueDate",
    "vendor",
    "paymentTerms",
    "metadata",
];
const VENDOR_FIELDS: &[&str] = &["id", "name", "country", "taxId"];
const TERMS_FIELDS: &[&str] = &["netDays", "dueDate"];
const METADATA_FIELDS: &[&str] =
    &["schemaVersion", "region", "accountId", "cellId", "partition", "correlationId", "producer"];

/// Collects violations while decoding.
struct Reader {
    found: Vec<Violation>,
    unknown: UnknownFields,
}

/// The raw members of one object, in the order of its field list, and
/// the nested objects the fast reader has read already.
pub(crate) struct Fields<'a> {
    prefix: &'static str,
    names: &'static [&'static str],
    values: Vec<Option<&'a RawValue>>,
    children: Vec<(&'static str, Fields<'a>)>,
}

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&'a RawValue> {
        let i = self.names.iter().position(|n| *n == name)?;
        self.values[i]
    }

    fn child(&self, name: &str) -> Option<&Fields<'a>> {
        self.children.iter().find(|(n, _)| *n == name).map(|(_, f)| f)
    }
}

/// The members of one kind of object: its field list and which of them
/// are objects with their own.
pub(crate) struct Shape {
    prefix: &'static str,
    names: &'static [&'static str],
    nested: &'static [(&'static str, &'static Shape)],
}

static VENDOR: Shape = Shape { prefix: "vendor", names: VENDOR_FIELDS, nested: &[] };
static TERMS: Shape = Shape { prefix: "paymentTerms", names: TERMS_FIELDS, nested: &[] };
static METADATA: Shape = Shape { prefix: "metadata", names: METADATA_FIELDS, nested: &[] };
static EVENT: Shape = Shape {
    prefix: "",
    names: EVENT_FIELDS,
    nested: &[("vendor", &VENDOR), ("paymentTerms", &TERMS), ("metadata", &METADATA)],
};

/// The fast reader of one object of `shape`: each member raw, nested
/// objects read in the same pass. Fails, for the thorough reader to take
/// over, at a duplicate member, an unknown one when they are refused, or a
/// nested member that is not an object.
#[derive(Clone, Copy)]
pub(crate) struct ObjectSeed {
    shape: &'static Shape,
    reject_unknown: bool,
}

impl<'de> serde::de::DeserializeSeed<'de> for ObjectSeed {
    type Value = Fields<'de>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Fields<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
        use serde::de::Error;
        let Shape { prefix, names, nested } = *self.shape;
        let mut fields = Fields { prefix, names, values: vec![None; names.len()], children: Vec::new() };
        while let Some(Key(key)) = map.next_key()? {
            if let Some(&(name, shape)) = nested.iter().find(|(n, _)| *n == key) {
                if fields.child(name).is_some() {
                    return Err(A::Error::custom("duplicate member"));
                }
                let child = map.next_value_seed(ObjectSeed { shape, reject_unknown: self.reject_unknown })?;
                fields.children.push((name, child));
            } else if let Some(i) = names.iter().position(|n| *n == key) {
                if fields.values[i].is_some() {
                    return Err(A::Error::custom("duplicate member"));
                }
                fields.values[i] = Some(map.next_value()?);
            } else if self.reject_unknown {
                return Err(A::Error::custom("unknown member"));
            } else {
                // Captured, not skipped: skipping does not check that a
                // string is UTF-8, and the thorough reader refuses it.
                map.next_value::<&RawValue>()?;
            }
        }
        Ok(fields)
    }
}

fn path(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_owned() } else { format!("{prefix}.{name}") }
}

impl Reader {
    fn push(&mut self, path: String, e: FieldError) {
        self.found.push(e.at(path));
    }

    fn event(&mut self, bytes: &[u8], options: &ValidationOptions, now: DateTime<Utc>) -> Option<InvoiceEvent> {
        if bytes.len() > MAX_EVENT_BYTES {
            self.push(
                "$".into(),
                FieldError::new(
                    Code::PayloadTooLarge,
                    format!("is {} bytes; the limit is {MAX_EVENT_BYTES} bytes (256 KiB)", bytes.len()),
                ),
            );
            return None;
        }
        let top = self.root(bytes)?;
        self.convert(&top, options, now)
    }

    /// The event in the members of its object, every problem recorded.
    fn convert(&mut self, f: &Fields<'_>, options: &ValidationOptions, now: DateTime<Utc>) -> Option<InvoiceEvent> {
        let event_id = self.req(f, "eventId", |r| EventId::parse(&string(r)?));
        let invoice_id = self.req(f, "invoiceId", |r| InvoiceId::new(string(r)?));
        let stage = self.req(f, "stage", |r| enumerated(r, Stage::from_wire, &Stage::ALL.map(Stage::as_str)));
        let status = self.req(f, "status", |r| enumerated(r, Status::from_wire, &Status::ALL.map(Status::as_str)));
        let previous_status =
            self.opt(f, "previousStatus", |r| enumerated(r, Status::from_wire, &Status::ALL.map(Status::as_str)));
        let reason = self.opt(f, "reason", |r| Reason::new(string(r)?));
        let amount = self.req(f, "amount", |r| Amount::from_json_number(number(r)?));
        let currency = self.req(f, "currency", |r| Currency::new(&string(r)?));
        let occurred_at = self.req(f, "occurredAt", |r| parse_timestamp(&string(r)?));
        let previous_occurred_at = self.opt(f, "previousOccurredAt", |r| parse_timestamp(&string(r)?));
        let submitted_at = self.opt(f, "submittedAt", |r| parse_timestamp(&string(r)?));
        let issue_date = self.req(f, "issueDate", |r| parse_date(&string(r)?));
        let vendor = self.nested(f, "vendor", "vendor", VENDOR_FIELDS, |me, v| {
            let id = me.req(v, "id", |r| VendorId::new(string(r)?));
            let name = me.req(v, "name", |r| VendorName::new(string(r)?));
            let country = me.req(v, "country", |r| CountryCode::new(&string(r)?));
            let tax_id = me.opt(v, "taxId", |r| TaxId::new(string(r)?));
            Some(Vendor { id: id?, name: name?, country: country?, tax_id: tax_id? })
        });
        let terms = self.nested(f, "paymentTerms", "paymentTerms", TERMS_FIELDS, |me, t| {
            let net_days = me.req(t, "netDays", |r| NetDays::new(integer(r)?));
            let due_date = me.opt(t, "dueDate", |r| parse_date(&string(r)?));
            Some((net_days, due_date))
        });
        let (net_days, due_date) = terms.unwrap_or((None, None));
        let metadata = self.nested(f, "metadata", "metadata", METADATA_FIELDS, |me, m| {
            let schema_version = me.req(m, "schemaVersion", |r| schema_version(integer(r)?));
            let region = me.req(m, "region", |r| Region::new(string(r)?));
            let account_id = me.req(m, "accountId", |r| AccountId::new(string(r)?));
            let cell_id = me.req(m, "cellId", |r| CellId::new(string(r)?));
            let partition = me.req(m, "partition", |r| Partition::new(integer(r)?));
            let correlation_id = me.req(m, "correlationId", |r| CorrelationId::new(string(r)?));
            let producer = me.req(m, "producer", |r| Producer::new(string(r)?));
            Some((
                partition,
                (|| {
                    Some(Metadata {
                        schema_version: schema_version?,
                        region: region?,
                        account_id: account_id?,
                        cell_id: cell_id?,
                        partition: partition?,
                        correlation_id: correlation_id?,
                        producer: producer?,
                    })
                })(),
            ))
        });
        let (partition, metadata) = metadata.unwrap_or((None, None));

        cross_checks(
            &Parts {
                invoice_id: invoice_id.as_ref(),
                stage,
                status,
                previous_status,
                reason: reason.as_ref().map(Option::as_ref),
                amount,
                currency,
                occurred_at,
                previous_occurred_at,
                submitted_at,
                issue_date,
                net_days,
                due_date,
                partition,
            },
            options,
            now,
            &mut self.found,
        );

        let issue_date = issue_date?;
        let net_days = net_days?;
        Some(InvoiceEvent {
            event_id: event_id?,
            invoice_id: invoice_id?,
            stage: stage?,
            status: status?,
            previous_status: previous_status?,
            reason: reason?,
            amount: amount?,
            currency: currency?,
            occurred_at: occurred_at?,
            previous_occurred_at: previous_occurred_at?,
            submitted_at: submitted_at?,
            issue_date,
            vendor: vendor?,
            payment_terms: PaymentTerms {
                net_days,
                due_date: due_date?.unwrap_or_else(|| net_days.due_date(issue_date)),
            },
            metadata: metadata?,
        })
    }

    /// The top-level object: distinguishes broken JSON from JSON of the
    /// wrong type, and reads the members in one pass.
    fn root<'a>(&mut self, bytes: &'a [u8]) -> Option<Fields<'a>> {
        let first = bytes.iter().copied().find(|b| !b.is_ascii_whitespace());
        if first == Some(b'{') {
            match serde_json::from_slice::<Members<'a>>(bytes) {
                Ok(members) => return Some(self.sort_members(members, "", EVENT_FIELDS)),
                Err(e) => {
                    self.push("$".into(), FieldError::new(Code::InvalidJson, e.to_string()));
                    return None;
                }
            }
        }
        match serde_json::from_slice::<&RawValue>(bytes) {
            Ok(raw) => self.push(
                "$".into(),
                FieldError::new(Code::WrongType, format!("expected an object, got {}", Kind::of(raw))),
            ),
            Err(e) => self.push("$".into(), FieldError::new(Code::InvalidJson, e.to_string())),
        }
        None
    }

    fn sort_members<'a>(
        &mut self,
        members: Members<'a>,
        prefix: &'static str,
        names: &'static [&'static str],
    ) -> Fields<'a> {
        let mut values = vec![None; names.len()];
        for (key, value) in members.0 {
            match names.iter().position(|n| *n == key) {
                Some(i) if values[i].is_some() => self.push(
                    path(prefix, &key),
                    FieldError::new(Code::DuplicateField, "appears more than once in the object"),
                ),
                Some(i) => values[i] = Some(value),
                None if self.unknown == UnknownFields::Reject => self.push(
                    path(prefix, &key),
                    FieldError::new(
                        Code::UnknownField,
                        format!("is not a field of schema version {SCHEMA_VERSION}; allowed: {}", names.join(", ")),
                    ),
                ),
                None => {}
            }
        }
        Fields { prefix, names, values, children: Vec::new() }
    }

    /// A required member: records `missing` or the decoder's error.
    fn req<'a, T>(
        &mut self,
        f: &Fields<'a>,
        name: &'static str,
        decode: impl FnOnce(&'a RawValue) -> Result<T, FieldError>,
    ) -> Option<T> {
        match f.get(name) {
            None => {
                self.push(path(f.prefix, name), FieldError::new(Code::Missing, "is required"));
                None
            }
            Some(raw) => decode(raw).map_err(|e| self.push(path(f.prefix, name), e)).ok(),
        }
    }

    /// An optional member: `Some(None)` when absent, `None` when invalid.
    /// `null` is not "absent": the schema has no nullable fields.
    #[allow(clippy::option_option, reason = "absent (outer None) differs from present and null (inner None)")]
    fn opt<'a, T>(
        &mut self,
        f: &Fields<'a>,
        name: &'static str,
        decode: impl FnOnce(&'a RawValue) -> Result<T, FieldError>,
    ) -> Option<Option<T>> {
        match f.get(name) {
            None => Some(None),
            Some(raw) => decode(raw).map(Some).map_err(|e| self.push(path(f.prefix, name), e)).ok(),
        }
    }

    /// A required member that is an object with its own fields.
    fn nested<'a, T>(
        &mut self,
        f: &Fields<'a>,
        name: &'static str,
        prefix: &'static str,
        names: &'static [&'static str],
        decode: impl FnOnce(&mut Reader, &Fields<'a>) -> Option<T>,
    ) -> Option<T> {
        if let Some(read) = f.child(name) {
            return decode(self, read);
        }
        let Some(raw) = f.get(name) else {
            self.push(path(f.prefix, name), FieldError::new(Code::Missing, "is required"));
            return None;
        };
        if Kind::of(raw) != Kind::Object {
            self.push(
                path(f.prefix, name),
                FieldError::new(Code::WrongType, format!("expected an object, got {}", Kind::of(raw))),
            );
            return None;
        }
        // The slice is a complete, already-checked JSON object.
        let members = serde_json::from_str::<Members<'a>>(raw.get())
            .map_err(|e| self.push(path(f.prefix, name), FieldError::new(Code::InvalidJson, e.to_string())))
            .ok()?;
        let fields = self.sort_members(members, prefix, names);
        decode(self, &fields)
    }
}

/// The JSON type of a raw value, told by its first byte (raw values start at
/// the value itself, never at whitespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Object,
    Array,
    String,
    Number,
    Boolean,
    Null,
}

impl Kind {
    fn of(raw: &RawValue) -> Kind {
        match raw.get().as_bytes().first() {
            Some(b'{') => Kind::Object,
            Some(b'[') => Kind::Array,
            Some(b'"') => Kind::String,
            Some(b't' | b'f') => Kind::Boolean,
            Some(b'n') => Kind::Null,
            _ => Kind::Number,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Object => "an object",
            Kind::Array => "an array",
            Kind::String => "a string",
            Kind::Number => "a number",
            Kind::Boolean => "a boolean",
            Kind::Null => "null",
        })
    }
}

/// A JSON string's text: borrowed from the input when it has no escapes
/// (most values), which spares an allocation and a second parse per field.
fn string(raw: &RawValue) -> Result<Cow<'_, str>, FieldError> {
    match Kind::of(raw) {
        Kind::String => {
            let text = raw.get();
            // A raw value is valid JSON: a string without a backslash is
            // exactly the text between its quotes.
            match text.get(1..text.len() - 1) {
                Some(inner) if !inner.contains('\\') => Ok(Cow::Borrowed(inner)),
                _ => serde_json::from_str::<String>(text)
                    .map(Cow::Owned)
                    .map_err(|e| FieldError::new(Code::InvalidFormat, format!("is not a valid string: {e}"))),
            }
        }
        other => Err(FieldError::new(Code::WrongType, format!("expected a string, got {other}"))),
    }
}

fn number(raw: &RawValue) -> Result<&str, FieldError> {
    match Kind::of(raw) {
        Kind::Number => Ok(raw.get()),
        other => Err(FieldError::new(Code::WrongType, format!("expected a number, got {other}"))),
    }
}

fn integer(raw: &RawValue) -> Result<i64, FieldError> {
    let text = number(raw).map_err(|e| FieldError::new(e.code, e.message.replace("a number", "an integer")))?;
    let digits = text.strip_prefix('-').unwrap_or(text);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FieldError::new(Code::WrongType, format!("expected an integer, got {text}")));
    }
    text.parse().map_err(|_| FieldError::new(Code::OutOfRange, format!("{text} is too large")))
}

fn enumerated<T>(raw: &RawValue, parse: fn(&str) -> Option<T>, allowed: &[&str]) -> Result<T, FieldError> {
    let s = string(raw)?;
    parse(&s).ok_or_else(|| {
        FieldError::new(Code::UnknownValue, format!("must be one of {}, got '{}'", allowed.join(", "), truncate(&s)))
    })
}

fn schema_version(v: i64) -> Result<u32, FieldError> {
    if v == i64::from(SCHEMA_VERSION) {
        Ok(SCHEMA_VERSION)
    } else {
        Err(FieldError::new(
            Code::UnsupportedVersion,
            format!("this library reads schema version {SCHEMA_VERSION}, got {v}"),
        ))
    }
}

/// Echoes at most 40 characters of a bad value into a message.
fn truncate(s: &str) -> Cow<'_, str> {
    match s.char_indices().nth(40) {
        Some((i, _)) => Cow::Owned(format!("{}…", &s[..i])),
        None => Cow::Borrowed(s),
    }
}

/// Reads `n` ASCII digits at `at`.
fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let part = b.get(at..at + n)?;
    part.iter().try_fold(0_u32, |acc, d| d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0')))
}

/// `YYYY-MM-DD` with the ranges of [`DATE_PATTERN`]; `None` if the text does
/// not have that shape.
fn date_fields(b: &[u8]) -> Option<(i32, u32, u32)> {
    let (y, m, d) = (digits(b, 0, 4)?, digits(b, 5, 2)?, digits(b, 8, 2)?);
    (b.get(4) == Some(&b'-') && b.get(7) == Some(&b'-') && (1..=12).contains(&m) && (1..=31).contains(&d)).then_some((
        i32::try_from(y).ok()?,
        m,
        d,
    ))
}

/// Parses a calendar date.
pub fn parse_date(s: &str) -> Result<NaiveDate, FieldError> {
    let b = s.as_bytes();
    let (y, m, d) = date_fields(b)
        .filter(|_| b.len() == 10)
        .ok_or_else(|| FieldError::new(Code::InvalidDate, "must be a date written YYYY-MM-DD"))?;
    NaiveDate::from_ymd_opt(y, m, d)
        .ok_or_else(|| FieldError::new(Code::InvalidDate, format!("{s} is not a day of the calendar")))
}

/// Parses an RFC 3339 timestamp that must be in UTC (`Z`), with up to nine
/// fractional digits. Other offsets get `not_utc`, anything else
/// `invalid_timestamp`.
pub fn parse_timestamp(s: &str) -> Result<DateTime<Utc>, FieldError> {
    let bad =
        || FieldError::new(Code::InvalidTimestamp, "must be an RFC 3339 UTC timestamp such as 2026-11-26T13:45:00Z");
    let b = s.as_bytes();
    let (y, mo, d) = date_fields(b).ok_or_else(bad)?;
    let (h, mi, se) =
        (digits(b, 11, 2).ok_or_else(bad)?, digits(b, 14, 2).ok_or_else(bad)?, digits(b, 17, 2).ok_or_else(bad)?);
    if b.get(10) != Some(&b'T') || b.get(13) != Some(&b':') || b.get(16) != Some(&b':') || h > 23 || mi > 59 || se > 59
    {
        return Err(bad());
    }
    let mut at = 19;
    let mut nanos = 0_u32;
    if b.get(at) == Some(&b'.') {
        let frac = b[at + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=9).contains(&frac) {
            return Err(bad());
        }
        let value = digits(b, at + 1, frac).ok_or_else(bad)?;
        nanos = value * 10_u32.pow(u32::try_from(9 - frac).unwrap_or(0));
        at += 1 + frac;
    }
    match &b[at..] {
        b"Z" => {}
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] if [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()) => {
            return Err(FieldError::new(
                Code::NotUtc,
                format!("must be in UTC and end in 'Z', got offset {}{}", char::from(*sign), &s[at + 1..]),
            ));
        }
        _ => return Err(bad()),
    }
    let date = NaiveDate::from_ymd_opt(y, mo, d)
        .ok_or_else(|| FieldError::new(Code::InvalidTimestamp, format!("{} is not a day of the calendar", &s[..10])))?;
    let time = NaiveTime::from_hms_nano_opt(h, mi, se, nanos).ok_or_else(bad)?;
    Ok(date.and_time(time).and_utc())
}

/// The members of one JSON object, values left raw, keys borrowed when they
/// have no escapes.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Members<'de>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some(Key(key)) = map.next_key()? {
                    out.push((key, map.next_value()?));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// An object key, borrowed when it has no escapes.
pub(crate) struct Key<'a>(pub(crate) Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Key<'de>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_must_be_rfc3339_utc() {
        let t = parse_timestamp("2026-11-26T13:45:00.123Z").unwrap();
        assert_eq!(t.timestamp_subsec_millis(), 123);
        assert!(parse_timestamp("2026-11-26T13:45:00Z").is_ok());
        assert_eq!(parse_timestamp("2026-11-26T13:45:00+02:00").unwrap_err().code, Code::NotUtc);
        for bad in [
            "2026-11-26 13:45:00Z",
            "2026-11-26T13:45Z",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-26T24:00:00Z",
            "2026-11-26T13:45:00.Z",
            "2026-11-26T13:45:00.1234567890Z",
            "2026-11-26T13:45:00z",
            "2026-11-26",
            "",
        ] {
            assert_eq!(parse_timestamp(bad).unwrap_err().code, Code::InvalidTimestamp, "{bad}");
        }
    }

    #[test]
    fn dates_are_calendar_days() {
        assert_eq!(parse_date("2028-02-29").unwrap().to_string(), "2028-02-29");
        for bad in ["2026-02-29", "2026-2-01", "20260201", "2026-00-10", "2026-01-01T"] {
            assert_eq!(parse_date(bad).unwrap_err().code, Code::InvalidDate, "{bad}");
        }
    }

    #[test]
    fn integers_refuse_fractions_and_exponents() {
        let raw = |s: &str| serde_json::from_str::<Box<RawValue>>(s).unwrap();
        assert_eq!(integer(&raw("30")).unwrap(), 30);
        assert_eq!(integer(&raw("-4")).unwrap(), -4);
        assert_eq!(integer(&raw("30.5")).unwrap_err().code, Code::WrongType);
        assert_eq!(integer(&raw("3e1")).unwrap_err().code, Code::WrongType);
        assert_eq!(integer(&raw("\"30\"")).unwrap_err().code, Code::WrongType);
        assert_eq!(integer(&raw("99999999999999999999")).unwrap_err().code, Code::OutOfRange);
    }

    #[test]
    fn a_valid_event_is_read_in_one_pass() {
        // The equivalence with the thorough reader is tests/fast_path.rs;
        // this checks the fast path is really taken.
        let bytes = include_bytes!("../fixtures/example-invoice-event.json");
        let now = "2026-11-26T14:00:00Z".parse().expect("time");
        for v in [Validator::default(), Validator::new(ValidationOptions::consumer())] {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let fields = serde::de::DeserializeSeed::deserialize(v.event_seed(), &mut de).expect("one pass");
            assert_eq!(v.finish(&fields, now), v.parse_thorough(bytes, now).ok());
            assert!(v.finish(&fields, now).is_some());
        }
    }

    #[test]
    fn messages_echo_at_most_forty_characters() {
        assert_eq!(truncate("short"), "short");
        assert_eq!(truncate(&"x".repeat(100)).chars().count(), 41);
    }
}
