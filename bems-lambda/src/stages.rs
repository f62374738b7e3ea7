//! The business rules of the four stages, as pure functions: an event in,
//! a [`Decision`] out. No I/O here; lookups (purchase orders, approvals) go
//! through small traits so the rules are tested without a network and users
//! can plug in their own systems.
//!
//! | stage | consumes | produces | rule (configurable) |
//! |---|---|---|---|
//! | ingestion | `submitted` | `ingested` | issue date neither in the future nor older than `max_invoice_age_days` |
//! | reconciliation | `ingested` | `reconciled` | amount within `tolerance_percent` of the purchase order; no order yet: retry later |
//! | authorization | `reconciled` | `authorized` | up to the currency's auto-approval limit, or approved by a person; not yet approved: retry later |
//! | posting | `authorized` | `posted` | the due date is `issueDate + netDays` |
//!
//! Every next event gets a deterministic id (UUID v5 of the incoming
//! event's id and the new status): processing the same event twice emits the
//! same event twice, which FIFO deduplication and the consumers' idempotency
//! turn into one.

use std::collections::HashMap;

use bems_core::fields::{EventId, InvoiceId, Producer, Reason};
use bems_core::lifecycle::{TRANSITIONS, check_transition};
use bems_core::{Currency, InvoiceEvent, Stage, Status};
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;

/// What a stage decided about one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Emit this event (the invoice moves on, or is rejected for good).
    Emit(Box<InvoiceEvent>),
    /// Not now: retry by redelivery (the order or approval may come).
    Retry(String),
    /// The event does not belong to this stage or cannot be applied.
    Invalid(String),
}

/// Looks up the purchase-order amount an invoice is matched against.
pub trait PurchaseOrders {
    /// The expected amount (in the invoice's currency) for `invoice`, if its
    /// order is known.
    fn expected_amount(&self, invoice: &InvoiceEvent) -> Option<Decimal>;
}

/// Looks up manual approvals for invoices above the auto-approval limit.
pub trait Approvals {
    /// Whether a person approved `invoice`.
    fn approved(&self, invoice: &InvoiceId) -> bool;
}

/// The reference deployment has no purchase-order system: every invoice
/// is matched against its own amount. Replace it with a lookup into your
/// ERP (`StageFunction::with_purchase_orders` in `crate::function`); the rules stay the same.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPurchaseOrderSystem;

impl PurchaseOrders for NoPurchaseOrderSystem {
    fn expected_amount(&self, invoice: &InvoiceEvent) -> Option<Decimal> {
        Some(invoice.amount.value())
    }
}

/// The reference deployment has no approval workflow: invoices above
/// the automatic limit wait, and end in the DLQ with the reason once
/// `maxReceiveCount` runs out. Replace it with your approval service
/// (`StageFunction::with_approvals` in `crate::function`).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoApprovals;

impl Approvals for NoApprovals {
    fn approved(&self, _: &InvoiceId) -> bool {
        false
    }
}

/// The configurable rules. Defaults are deliberately plain: they are the
/// reference for users' own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Ingestion refuses invoices issued longer ago than this.
    pub max_invoice_age_days: i64,
    /// Reconciliation accepts amounts within this percentage of the order.
    pub tolerance_percent: Decimal,
    /// Authorization approves automatically up to these amounts, by currency.
    pub auto_approve_limits: HashMap<&'static str, Decimal>,
    /// The limit for currencies not listed.
    pub default_auto_approve_limit: Decimal,
    /// The `producer` written on emitted events.
    pub producer: Producer,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            max_invoice_age_days: 365,
            tolerance_percent: Decimal::new(2, 0),
            auto_approve_limits: HashMap::from([
                ("EUR", Decimal::new(50_000, 0)),
                ("USD", Decimal::new(50_000, 0)),
                ("GBP", Decimal::new(40_000, 0)),
                ("JPY", Decimal::new(7_500_000, 0)),
            ]),
            default_auto_approve_limit: Decimal::new(10_000, 0),
            producer: Producer::new("bems-processor").unwrap_or_else(|_| unreachable!("valid producer name")),
        }
    }
}

impl Rules {
    /// The automatic approval limit for `currency`.
    pub fn auto_approve_limit(&self, currency: Currency) -> Decimal {
        self.auto_approve_limits.get(currency.code()).copied().unwrap_or(self.default_auto_approve_limit)
    }
}

/// The namespace of deterministic next-event ids.
const NEXT_EVENT_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6d1f_0c1e_8a57_4b0e_9d33_5b1c_0e7a_b0e5);

/// The id of the event that moves `from` to `status`: the same input always
/// yields the same id.
pub fn next_event_id(from: &EventId, status: Status) -> EventId {
    let name = format!("{from}/{status}");
    EventId::from_uuid(uuid::Uuid::new_v5(&NEXT_EVENT_NAMESPACE, name.as_bytes()))
}

/// The event that follows `event` with `status`, at `now`.
fn next(event: &InvoiceEvent, status: Status, reason: Option<String>, rules: &Rules, now: DateTime<Utc>) -> Decision {
    let stage = TRANSITIONS
        .iter()
        .find(|(from, to, _)| *from == Some(event.status) && *to == status)
        .map(|&(_, _, stage)| stage);
    let Some(stage) = stage else {
        return Decision::Invalid(format!("no transition from {} to {status}", event.status));
    };
    let mut out = event.clone();
    out.event_id = next_event_id(&event.event_id, status);
    out.previous_status = Some(event.status);
    out.status = status;
    out.stage = stage;
    out.occurred_at = now.max(event.occurred_at);
    // Carried in the event so a record alone gives both latencies.
    out.previous_occurred_at = Some(event.occurred_at);
    out.submitted_at = event.submitted_at.or((event.status == Status::Submitted).then_some(event.occurred_at));
    out.metadata.producer = rules.producer.clone();
    out.reason = match reason {
        Some(r) => match Reason::new(r.chars().take(500).collect::<String>()) {
            Ok(r) => Some(r),
            Err(e) => return Decision::Invalid(format!("rejection reason: {e}")),
        },
        None => None,
    };
    Decision::Emit(Box::new(out))
}

/// Checks that `event` is work for `stage` (not a terminal status, the
/// right stage, a legal transition).
fn admit(stage: Stage, event: &InvoiceEvent) -> Result<(), Decision> {
    if event.stage != stage {
        return Err(Decision::Invalid(format!("a {} event reached the {stage} processor", event.stage)));
    }
    if event.status.is_terminal() {
        return Err(Decision::Invalid(format!("'{}' is terminal: nothing to do", event.status)));
    }
    check_transition(event.previous_status, event.status, event.stage).map_err(|e| Decision::Invalid(e.to_string()))
}

/// Ingestion: `submitted` becomes `ingested`, unless the issue date is in
/// the future or too old.
pub fn ingest(event: &InvoiceEvent, rules: &Rules, now: DateTime<Utc>) -> Decision {
    if let Err(d) = admit(Stage::Ingestion, event) {
        return d;
    }
    let today: NaiveDate = now.date_naive();
    if event.issue_date > today {
        return next(
            event,
            Status::Rejected,
            Some(format!("issue date {} is in the future", event.issue_date)),
            rules,
            now,
        );
    }
    let age = (today - event.issue_date).num_days();
    if age > rules.max_invoice_age_days {
        return next(
            event,
            Status::Rejected,
            Some(format!("issued {age} days ago; invoices older than {} days are refused", rules.max_invoice_age_days)),
            rules,
            now,
        );
    }
    next(event, Status::Ingested, None, rules, now)
}

/// Reconciliation: `ingested` becomes `reconciled` when the amount is
/// within tolerance of the purchase order.
pub fn reconcile(event: &InvoiceEvent, orders: &impl PurchaseOrders, rules: &Rules, now: DateTime<Utc>) -> Decision {
    if let Err(d) = admit(Stage::Reconciliation, event) {
        return d;
    }
    let Some(expected) = orders.expected_amount(event) else {
        return Decision::Retry(format!("no purchase order for {} yet", event.invoice_id));
    };
    let amount = event.amount.value();
    let allowed = expected.abs() * rules.tolerance_percent / Decimal::ONE_HUNDRED;
    if (amount - expected).abs() > allowed {
        return next(
            event,
            Status::Rejected,
            Some(format!(
                "amount {amount} {} differs from the purchase order's {expected} by more than {}%",
                event.currency, rules.tolerance_percent
            )),
            rules,
            now,
        );
    }
    next(event, Status::Reconciled, None, rules, now)
}

/// Authorization: `reconciled` becomes `authorized` up to the currency's
/// limit, or above it once a person approved.
pub fn authorize(event: &InvoiceEvent, approvals: &impl Approvals, rules: &Rules, now: DateTime<Utc>) -> Decision {
    if let Err(d) = admit(Stage::Authorization, event) {
        return d;
    }
    let limit = rules.auto_approve_limit(event.currency);
    if event.amount.value() > limit && !approvals.approved(&event.invoice_id) {
        return Decision::Retry(format!(
            "{} {} is above the automatic limit of {limit}; waiting for approval",
            event.amount, event.currency
        ));
    }
    next(event, Status::Authorized, None, rules, now)
}

/// Posting: `authorized` becomes `posted`, with the due date from the
/// payment terms.
pub fn post(event: &InvoiceEvent, rules: &Rules, now: DateTime<Utc>) -> Decision {
    if let Err(d) = admit(Stage::Posting, event) {
        return d;
    }
    let due = event.payment_terms.net_days.due_date(event.issue_date);
    match next(event, Status::Posted, None, rules, now) {
        Decision::Emit(mut out) => {
            out.payment_terms.due_date = due;
            Decision::Emit(out)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bems_core::Validator;

    fn event(stage: Stage, status: Status, previous: Option<Status>) -> InvoiceEvent {
        let mut e = Validator::default()
            .parse(include_bytes!("../../bems-core/fixtures/example-invoice-event.json"))
            .expect("fixture");
        e.stage = stage;
        e.status = status;
        e.previous_status = previous;
        e
    }

    fn now() -> DateTime<Utc> {
        "2026-11-26T14:00:00Z".parse().expect("time")
    }

    struct Orders(Option<Decimal>);
    impl PurchaseOrders for Orders {
        fn expected_amount(&self, _: &InvoiceEvent) -> Option<Decimal> {
            self.0
        }
    }

    struct Approved(bool);
    impl Approvals for Approved {
        fn approved(&self, _: &InvoiceId) -> bool {
            self.0
        }
    }

    fn emitted(d: Decision) -> InvoiceEvent {
        match d {
            Decision::Emit(e) => *e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[test]
    fn the_happy_path_walks_all_four_stages_with_valid_events() {
        let rules = Rules::default();
        let e0 = event(Stage::Ingestion, Status::Submitted, None);
        let e1 = emitted(ingest(&e0, &rules, now()));
        assert_eq!(
            (e1.stage, e1.status, e1.previous_status),
            (Stage::Reconciliation, Status::Ingested, Some(Status::Submitted))
        );
        let e2 = emitted(reconcile(&e1, &Orders(Some(Decimal::new(125_000, 2))), &rules, now()));
        assert_eq!((e2.stage, e2.status), (Stage::Authorization, Status::Reconciled));
        let e3 = emitted(authorize(&e2, &Approved(false), &rules, now()));
        assert_eq!((e3.stage, e3.status), (Stage::Posting, Status::Authorized));
        let e4 = emitted(post(&e3, &rules, now()));
        assert_eq!((e4.stage, e4.status), (Stage::Posting, Status::Posted));
        for e in [&e1, &e2, &e3, &e4] {
            assert_eq!(e.check(&bems_core::ValidationOptions::default(), now()), Ok(()), "{e:?}");
        }
        // Each event carries when its previous status happened and when the
        // invoice was submitted, so a record alone gives both latencies.
        for (before, after) in [(&e0, &e1), (&e1, &e2), (&e2, &e3), (&e3, &e4)] {
            assert_eq!(after.previous_occurred_at, Some(before.occurred_at));
            assert_eq!(after.submitted_at, Some(e0.occurred_at));
        }
        assert_eq!(e4.end_to_end_latency(), Some(e4.occurred_at - e0.occurred_at));
        assert_eq!(e4.stage_latency(), Some(e4.occurred_at - e3.occurred_at));
    }

    #[test]
    fn next_event_ids_are_deterministic() {
        let rules = Rules::default();
        let e0 = event(Stage::Ingestion, Status::Submitted, None);
        let a = emitted(ingest(&e0, &rules, now()));
        let b = emitted(ingest(&e0, &rules, now()));
        assert_eq!(a.event_id, b.event_id, "the same input yields the same event");
        assert_ne!(a.event_id, e0.event_id);
        assert_eq!(next_event_id(&e0.event_id, Status::Ingested), a.event_id);
    }

    #[test]
    fn ingestion_rejects_future_and_stale_invoices() {
        let rules = Rules::default();
        let mut e = event(Stage::Ingestion, Status::Submitted, None);
        e.issue_date = NaiveDate::from_ymd_opt(2026, 12, 1).expect("date");
        let r = emitted(ingest(&e, &rules, now()));
        assert_eq!((r.stage, r.status), (Stage::Ingestion, Status::Rejected));
        assert!(r.reason.as_ref().is_some_and(|x| x.as_str().contains("future")));
        e.issue_date = NaiveDate::from_ymd_opt(2024, 1, 1).expect("date");
        assert!(emitted(ingest(&e, &rules, now())).reason.is_some_and(|x| x.as_str().contains("older than 365 days")));
    }

    #[test]
    fn reconciliation_tolerance_and_missing_orders() {
        let rules = Rules::default();
        let e = event(Stage::Reconciliation, Status::Ingested, Some(Status::Submitted));
        // 1250.50 against 1230.00: 1.67% off, within 2%.
        assert_eq!(
            emitted(reconcile(&e, &Orders(Some(Decimal::new(1_230, 0))), &rules, now())).status,
            Status::Reconciled
        );
        // Against 1200.00: 4.2% off.
        let r = emitted(reconcile(&e, &Orders(Some(Decimal::new(1_200, 0))), &rules, now()));
        assert_eq!((r.stage, r.status), (Stage::Reconciliation, Status::Rejected));
        assert!(matches!(reconcile(&e, &Orders(None), &rules, now()), Decision::Retry(_)));
    }

    #[test]
    fn authorization_limits_by_currency_and_manual_approval() {
        let rules = Rules::default();
        let mut e = event(Stage::Authorization, Status::Reconciled, Some(Status::Ingested));
        e.amount = bems_core::Amount::new(Decimal::new(60_000, 0)).expect("amount");
        assert!(matches!(authorize(&e, &Approved(false), &rules, now()), Decision::Retry(m) if m.contains("50000")));
        assert_eq!(emitted(authorize(&e, &Approved(true), &rules, now())).status, Status::Authorized);
        e.currency = Currency::new("CHF").expect("currency");
        assert!(matches!(authorize(&e, &Approved(false), &rules, now()), Decision::Retry(m) if m.contains("10000")));
    }

    #[test]
    fn events_for_another_stage_or_terminal_or_illegal_are_invalid() {
        let rules = Rules::default();
        let e = event(Stage::Reconciliation, Status::Ingested, Some(Status::Submitted));
        assert!(matches!(ingest(&e, &rules, now()), Decision::Invalid(m) if m.contains("reconciliation event")));
        let posted = event(Stage::Posting, Status::Posted, Some(Status::Authorized));
        assert!(matches!(post(&posted, &rules, now()), Decision::Invalid(m) if m.contains("terminal")));
        let skipped = event(Stage::Posting, Status::Authorized, Some(Status::Submitted));
        assert!(matches!(post(&skipped, &rules, now()), Decision::Invalid(m) if m.contains("skips")));
    }

    #[test]
    fn posting_writes_the_due_date_from_the_terms() {
        let rules = Rules::default();
        let mut e = event(Stage::Posting, Status::Authorized, Some(Status::Reconciled));
        e.payment_terms.due_date = NaiveDate::from_ymd_opt(2000, 1, 1).expect("date");
        let p = emitted(post(&e, &rules, now()));
        assert_eq!(p.payment_terms.due_date.to_string(), "2026-12-25");
    }
}
