//! A cell's routing table: every name, rule, subscription and filter policy
//! of one cell, derived from a handful of parameters.
//!
//! ## Topology
//!
//! ```text
//! producer ─PutEvents─▶ bus bems-<cell>
//!   rule bems-<cell>-<stage>-pNN  (stage S, partition N)  ──▶ SQS FIFO bems-<cell>-<stage>-route.fifo
//!                                      MessageGroupId "<stage>-pNN" (static, per target)
//!   SQS FIFO bems-<cell>-<stage>-route.fifo  (DLQ bems-<cell>-<stage>-route-dlq.fifo)
//!     └─ route forwarder (Lambda) ─PublishBatch, same group─▶ SNS FIFO bems-<cell>-<stage>.fifo
//!   SNS FIFO bems-<cell>-<stage>.fifo
//!     ├─▶ SQS FIFO bems-<cell>-<stage>.fifo   filter: status is not terminal  (the stage's work)
//!     │        └─ DLQ bems-<cell>-<stage>-dlq.fifo
//!     └─▶ SQS FIFO bems-<cell>-status.fifo    no filter: every status change (Timestream writer)
//!              └─ DLQ bems-<cell>-status-dlq.fifo
//! ```
//!
//! EventBridge gives a FIFO target one static `MessageGroupId`, so ordering
//! and parallelism come from rules: one rule per (stage, partition), each
//! with one target whose group is `<stage>-pNN`. A classic rule can set that
//! group only for an SQS FIFO target (`SqsParameters`; rules have no SNS
//! parameters), so each stage's rules deliver to a route queue and a small
//! forwarder publishes to the stage's SNS FIFO topic with the same group.
//! SNS FIFO keeps the group on delivery, so both subscribed queues see
//! per-partition groups: an invoice's events stay in order and up to P
//! groups per stage are processed in parallel. Terminal events (`posted`,
//! `rejected`) travel the same way but the stage queue's filter policy keeps
//! them away from the processors; the status queue records them.
//!
//! ## Events no rule routes
//!
//! An event of our source that no stage rule matches (a partition outside
//! 1..P, another cell's id, an unknown stage or detail type, a field
//! missing) would be dropped by EventBridge without a trace. The API's
//! models refuse such events with 400, but producers using the SDK reach
//! the bus directly, so one more rule, [`CellSpec::unrouted_pattern`], is
//! the exact complement of the stage rules within our source and delivers
//! what they miss to the standard queue `bems-<cell>-unrouted`, which has
//! a not-empty alarm. What an in-range partition cannot show (that it is
//! the invoice's own, `xxh64(invoiceId) mod P + 1`) is checked by the
//! consumers, which dead-letter a wrong one with the reason.
//!
//! ## Quota arithmetic
//!
//! A bus holds its stage rules (4·P), the unrouted rule, and the managed
//! rule EventBridge creates for the archive: 4·P + 2.
//!
//! | partitions | rules on the bus (4·P + 2) | targets per rule | fits the default 300 rules per bus |
//! |---:|---:|---:|---|
//! | 1 | 6 | 1 (of 5) | yes |
//! | 16 | 66 | 1 | yes |
//! | 74 | 298 | 1 | yes |
//! | 75 | 302 | 1 | no |
//! | 99 | 398 | 1 | no: raise "Maximum number of rules per event bus" to ≥ 398 first |
//!
//! [`CellSpec::new`] refuses a configuration that breaks a quota it knows
//! (rules per bus, targets per rule, pattern length, SNS filter policy
//! limits, name lengths) unless the raised quota is declared in [`Quotas`].

use serde::Serialize;

use super::builder::{Match, PatternBuilder};
use super::event_pattern::EventPattern;
use super::filter_policy::{FilterPolicy, FilterPolicyScope};
use super::ruleset::RuleSet;
use crate::contract::{INVOICE_ID_ATTRIBUTE, SMOKE_INVOICE_PREFIX};
use crate::envelope::{DETAIL_TYPE, EVENT_SOURCE};
use crate::fields::{AccountId, CellId, Region};
use crate::lifecycle::{Stage, Status};
use crate::partition::{Partition, PartitionCount, message_group_id};

/// The service quotas a cell must fit. Defaults are AWS's defaults; raise
/// one here only after raising it in Service Quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Quotas {
    /// EventBridge: rules per event bus (default 300, adjustable).
    pub rules_per_bus: u32,
    /// EventBridge: targets per rule (5, fixed).
    pub targets_per_rule: u32,
    /// EventBridge: characters in an event pattern (2,048).
    pub pattern_chars: usize,
}

impl Default for Quotas {
    fn default() -> Quotas {
        Quotas { rules_per_bus: 300, targets_per_rule: 5, pattern_chars: 2048 }
    }
}

/// Why a cell specification is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CellSpecError {
    /// The cell would need more of something than a quota allows.
    #[error("{what}: the cell needs {needed}, the quota is {limit}. {hint}")]
    QuotaExceeded {
        /// Which quota.
        what: &'static str,
        /// How much the cell needs.
        needed: u64,
        /// The quota in force.
        limit: u64,
        /// What to do about it.
        hint: &'static str,
    },
    /// A derived resource name would be too long for its service.
    #[error("resource name '{name}' is {len} characters; {service} allows {max}")]
    NameTooLong {
        /// The name.
        name: String,
        /// Its length.
        len: usize,
        /// The service's limit.
        max: usize,
        /// Which service.
        service: &'static str,
    },
}

/// One EventBridge rule of the cell and its single target.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageRule {
    /// Rule name: `bems-<cell>-<stage>-pNN`.
    pub name: String,
    /// The stage it routes.
    pub stage: Stage,
    /// The partition it routes.
    pub partition: Partition,
    /// Its event pattern.
    pub pattern: EventPattern,
    /// The SQS FIFO route queue it targets.
    pub route_queue: String,
    /// The SNS FIFO topic the route queue's messages are forwarded to.
    pub target_topic: String,
    /// The static `MessageGroupId` of its target.
    pub message_group_id: String,
}

/// One SNS subscription of the cell.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    /// The topic.
    pub topic: String,
    /// The subscribed SQS queue.
    pub queue: String,
    /// The filter policy, if any (scope `MessageBody`).
    pub filter_policy: Option<FilterPolicy>,
    /// Raw message delivery: the queue gets the EventBridge event itself,
    /// not an SNS envelope around it. Always on.
    pub raw_message_delivery: bool,
}

/// Everything about one cell's routing.
#[derive(Debug, Clone)]
pub struct CellSpec {
    cell_id: CellId,
    region: Region,
    account_id: AccountId,
    partitions: PartitionCount,
    quotas: Quotas,
}

const SQS_NAME_MAX: usize = 80;
const RULE_NAME_MAX: usize = 64;

impl CellSpec {
    /// A cell with AWS's default quotas.
    pub fn new(
        cell_id: CellId,
        region: Region,
        account_id: AccountId,
        partitions: PartitionCount,
    ) -> Result<CellSpec, CellSpecError> {
        CellSpec::with_quotas(cell_id, region, account_id, partitions, Quotas::default())
    }

    /// A cell in an account whose quotas have been raised to `quotas`.
    pub fn with_quotas(
        cell_id: CellId,
        region: Region,
        account_id: AccountId,
        partitions: PartitionCount,
        quotas: Quotas,
    ) -> Result<CellSpec, CellSpecError> {
        let spec = CellSpec { cell_id, region, account_id, partitions, quotas };
        spec.check()?;
        Ok(spec)
    }

    fn check(&self) -> Result<(), CellSpecError> {
        let rules = u64::from(self.rule_count());
        if rules > u64::from(self.quotas.rules_per_bus) {
            return Err(CellSpecError::QuotaExceeded {
                what: "EventBridge rules per event bus",
                needed: rules,
                limit: u64::from(self.quotas.rules_per_bus),
                hint: "Use fewer partitions (4 rules each, plus the unrouted rule and the archive's), or raise the quota in Service Quotas and declare it in Quotas::rules_per_bus.",
            });
        }
        if self.quotas.targets_per_rule < 1 {
            return Err(CellSpecError::QuotaExceeded {
                what: "EventBridge targets per rule",
                needed: 1,
                limit: u64::from(self.quotas.targets_per_rule),
                hint: "Every stage rule has exactly one target.",
            });
        }
        for stage in Stage::ALL {
            for name in
                [self.queue_name(stage), self.dlq_name(stage), self.route_queue_name(stage), self.route_dlq_name(stage)]
            {
                name_fits(&name, SQS_NAME_MAX, "SQS")?;
            }
            // Partition numbers are always two digits, so one rule name stands for all.
            if let Some(last) = self.partitions.partitions().last() {
                name_fits(&self.rule_name(stage, last), RULE_NAME_MAX, "EventBridge")?;
            }
        }
        let longest = self
            .stage_rules()
            .iter()
            .map(|r| &r.pattern)
            .chain([&self.unrouted_pattern()])
            .map(|p| p.to_json().chars().count())
            .max()
            .unwrap_or(0);
        if longest > self.quotas.pattern_chars {
            return Err(CellSpecError::QuotaExceeded {
                what: "EventBridge event pattern characters",
                needed: longest as u64,
                limit: self.quotas.pattern_chars as u64,
                hint: "Shorten the cell id.",
            });
        }
        Ok(())
    }

    /// The cell id.
    pub fn cell_id(&self) -> &CellId {
        &self.cell_id
    }
    /// The Region.
    pub fn region(&self) -> &Region {
        &self.region
    }
    /// The account.
    pub fn account_id(&self) -> &AccountId {
        &self.account_id
    }
    /// The number of partitions.
    pub fn partitions(&self) -> PartitionCount {
        self.partitions
    }
    /// The quotas the spec was checked against.
    pub fn quotas(&self) -> Quotas {
        self.quotas
    }

    /// EventBridge rules the cell puts on its bus: one per stage and
    /// partition, the unrouted rule, and the archive's managed rule.
    pub fn rule_count(&self) -> u32 {
        4 * u32::from(self.partitions.get()) + 2
    }

    /// The pattern of the (stage, partition) rule: our source and detail
    /// type, this cell, this stage, this partition.
    pub fn stage_pattern(&self, stage: Stage, partition: Partition) -> EventPattern {
        PatternBuilder::default()
            .field(&["source"], [Match::exact(EVENT_SOURCE)])
            .field(&["detail-type"], [Match::exact(DETAIL_TYPE)])
            .field(&["detail", "stage"], [Match::exact(stage.as_str())])
            .field(&["detail", "metadata", "cellId"], [Match::exact(self.cell_id.as_str())])
            .field(&["detail", "metadata", "partition"], [Match::integer(i64::from(partition.get()))])
            .build()
            // Every part is a validated value: the pattern is always valid.
            .unwrap_or_else(|e| unreachable!("stage pattern is valid: {e}"))
    }

    /// The unrouted rule's pattern: our source, and any of a detail type,
    /// stage, cell id or partition that no stage rule accepts (missing
    /// included). It matches exactly the events of our source that no stage
    /// rule matches: each stage rule requires the detail type, one of the
    /// four stages, this cell and one whole number in 1..P, and each
    /// alternative here negates one of those with `anything-but` (a present
    /// value outside the list) or `exists: false` (no value).
    pub fn unrouted_pattern(&self) -> EventPattern {
        let stages: Vec<&str> = Stage::ALL.iter().map(|s| s.as_str()).collect();
        let partitions = self.partitions.partitions().map(|p| i64::from(p.get()));
        PatternBuilder::default()
            .field(&["source"], [Match::exact(EVENT_SOURCE)])
            .any_of(
                &[],
                [
                    PatternBuilder::default().field(&["detail-type"], [Match::anything_but([DETAIL_TYPE])]),
                    PatternBuilder::default()
                        .field(&["detail", "stage"], [Match::anything_but(stages), Match::exists(false)]),
                    PatternBuilder::default().field(
                        &["detail", "metadata", "cellId"],
                        [Match::anything_but([self.cell_id.as_str()]), Match::exists(false)],
                    ),
                    PatternBuilder::default().field(
                        &["detail", "metadata", "partition"],
                        [Match::anything_but_integers(partitions), Match::exists(false)],
                    ),
                ],
            )
            .build()
            // Every part is a validated value: the pattern is always valid.
            .unwrap_or_else(|e| unreachable!("unrouted pattern is valid: {e}"))
    }

    /// Every stage rule, by stage then partition.
    pub fn stage_rules(&self) -> Vec<StageRule> {
        Stage::ALL
            .into_iter()
            .flat_map(|stage| self.partitions.partitions().map(move |p| (stage, p)))
            .map(|(stage, partition)| StageRule {
                name: self.rule_name(stage, partition),
                stage,
                partition,
                pattern: self.stage_pattern(stage, partition),
                route_queue: self.route_queue_name(stage),
                target_topic: self.topic_name(stage),
                message_group_id: message_group_id(stage, partition),
            })
            .collect()
    }

    /// The filter policy of a stage queue's subscription: only events the
    /// stage must act on, so terminal statuses never reach a processor.
    pub fn stage_filter_policy(&self) -> FilterPolicy {
        let terminal: Vec<&str> = Status::ALL.into_iter().filter(|s| s.is_terminal()).map(Status::as_str).collect();
        PatternBuilder::default()
            .field(&["detail", "status"], [Match::anything_but(terminal)])
            .build_filter_policy(FilterPolicyScope::MessageBody)
            .unwrap_or_else(|e| unreachable!("stage filter policy is valid: {e}"))
    }

    /// The filter policy of the smoke queue's subscriptions: the invoice id
    /// the forwarder sets as a message attribute starts with
    /// [`SMOKE_INVOICE_PREFIX`](crate::contract::SMOKE_INVOICE_PREFIX).
    pub fn smoke_filter_policy(&self) -> FilterPolicy {
        PatternBuilder::default()
            .field(&[INVOICE_ID_ATTRIBUTE], [Match::prefix(SMOKE_INVOICE_PREFIX)])
            .build_filter_policy(FilterPolicyScope::MessageAttributes)
            .unwrap_or_else(|e| unreachable!("smoke filter policy is valid: {e}"))
    }

    /// Every SNS subscription: per stage, its queue (filtered), the
    /// status-change queue (unfiltered) and the smoke queue (smoke-test
    /// invoices only).
    pub fn subscriptions(&self) -> Vec<Subscription> {
        Stage::ALL
            .into_iter()
            .flat_map(|stage| {
                [
                    Subscription {
                        topic: self.topic_name(stage),
                        queue: self.queue_name(stage),
                        filter_policy: Some(self.stage_filter_policy()),
                        raw_message_delivery: true,
                    },
                    Subscription {
                        topic: self.topic_name(stage),
                        queue: self.status_queue_name(),
                        filter_policy: None,
                        raw_message_delivery: true,
                    },
                    Subscription {
                        topic: self.topic_name(stage),
                        queue: self.smoke_queue_name(),
                        filter_policy: Some(self.smoke_filter_policy()),
                        raw_message_delivery: true,
                    },
                ]
            })
            .collect()
    }

    /// The stage rules as a [`RuleSet`], named by rule, for evaluating the
    /// cell's routing locally.
    pub fn rule_set(&self) -> RuleSet {
        RuleSet::new(self.stage_rules().into_iter().map(|r| (r.name, r.pattern)))
            .unwrap_or_else(|e| unreachable!("rule names are unique: {e}"))
    }

    /// Where an EventBridge event goes: the queues that receive it, after
    /// the rules and the filter policies; the unrouted queue for an event
    /// of our source that no stage rule takes. Empty for events of another
    /// source.
    pub fn destinations(&self, event: &serde_json::Value) -> Vec<String> {
        let subscriptions = self.subscriptions();
        let mut out = Vec::new();
        if self.unrouted_pattern().matches(event) {
            out.push(self.unrouted_queue_name());
        }
        // The attributes the route forwarder publishes the event with.
        let invoice = event.pointer("/detail/invoiceId").and_then(serde_json::Value::as_str);
        let attributes = invoice.map_or(
            serde_json::Value::Null,
            |id| serde_json::json!({ INVOICE_ID_ATTRIBUTE: { "Type": "String", "Value": id } }),
        );
        for rule in self.stage_rules().iter().filter(|r| r.pattern.matches(event)) {
            for sub in subscriptions.iter().filter(|s| s.topic == rule.target_topic) {
                if sub.filter_policy.as_ref().is_none_or(|f| f.matches(event, &attributes)) {
                    out.push(sub.queue.clone());
                }
            }
        }
        out
    }
}

fn name_fits(name: &str, max: usize, service: &'static str) -> Result<(), CellSpecError> {
    if name.len() > max {
        return Err(CellSpecError::NameTooLong { name: name.to_owned(), len: name.len(), max, service });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(p: u32) -> Result<CellSpec, CellSpecError> {
        CellSpec::new(
            CellId::new("prod-eu-1").unwrap(),
            Region::new("eu-west-1").unwrap(),
            AccountId::new("123456789012").unwrap(),
            PartitionCount::new(p).unwrap(),
        )
    }

    #[test]
    fn quota_arithmetic_for_1_16_74_75_and_99_partitions() {
        assert_eq!(spec(1).unwrap().stage_rules().len(), 4);
        assert_eq!(spec(16).unwrap().stage_rules().len(), 64);
        assert_eq!(spec(16).unwrap().rule_count(), 66, "the unrouted rule and the archive's count too");
        assert_eq!(spec(74).unwrap().rule_count(), 298);
        assert!(matches!(spec(75), Err(CellSpecError::QuotaExceeded { needed: 302, limit: 300, .. })));
        let err = spec(99).unwrap_err();
        assert_eq!(
            err,
            CellSpecError::QuotaExceeded {
                what: "EventBridge rules per event bus",
                needed: 398,
                limit: 300,
                hint: "Use fewer partitions (4 rules each, plus the unrouted rule and the archive's), or raise the quota in Service Quotas and declare it in Quotas::rules_per_bus.",
            }
        );
        let raised = CellSpec::with_quotas(
            CellId::new("prod-eu-1").unwrap(),
            Region::new("eu-west-1").unwrap(),
            AccountId::new("123456789012").unwrap(),
            PartitionCount::new(99).unwrap(),
            Quotas { rules_per_bus: 400, ..Quotas::default() },
        )
        .unwrap();
        assert_eq!(raised.rule_count(), 398);
    }

    #[test]
    fn names_fit_their_services_at_the_longest_cell_id() {
        let s = CellSpec::new(
            CellId::new("abcdefghij-klmnopqrs").unwrap(),
            Region::new("ap-southeast-4").unwrap(),
            AccountId::new("123456789012").unwrap(),
            PartitionCount::new(74).unwrap(),
        )
        .unwrap();
        assert_eq!(s.dlq_name(Stage::Reconciliation), "bems-abcdefghij-klmnopqrs-reconciliation-dlq.fifo");
        assert!(s.stage_rules().iter().all(|r| r.name.len() <= 64 && r.pattern.to_json().len() <= 2048));
        assert!(s.unrouted_rule_name().len() <= 64 && s.unrouted_pattern().to_json().len() <= 2048);
    }

    #[test]
    fn each_stage_and_partition_is_its_own_group_and_rule() {
        let s = spec(16).unwrap();
        let rules = s.stage_rules();
        let mut groups: Vec<(&str, &str)> =
            rules.iter().map(|r| (r.target_topic.as_str(), r.message_group_id.as_str())).collect();
        groups.sort_unstable();
        groups.dedup();
        assert_eq!(groups.len(), 64);
        let r = &rules[16 + 6]; // reconciliation, partition 7
        assert_eq!(r.name, "bems-prod-eu-1-reconciliation-p07");
        assert_eq!(r.message_group_id, "reconciliation-p07");
        assert_eq!(r.route_queue, "bems-prod-eu-1-reconciliation-route.fifo");
        assert_eq!(r.target_topic, "bems-prod-eu-1-reconciliation.fifo");
        assert_eq!(s.stage_of_route_queue(&r.route_queue), Some(Stage::Reconciliation));
        assert_eq!(s.stage_of_route_queue("bems-prod-eu-1-reconciliation.fifo"), None);
        assert_eq!(
            r.pattern.to_json(),
            r#"{"detail":{"metadata":{"cellId":["prod-eu-1"],"partition":[7]},"stage":["reconciliation"]},"detail-type":["Invoice Status Changed"],"source":["bems.invoices"]}"#
        );
    }

    #[test]
    fn an_event_reaches_its_stage_queue_and_the_status_queue_only() {
        let s = spec(16).unwrap();
        let event: serde_json::Value =
            serde_json::from_str(include_str!("../../fixtures/example-eventbridge-event-invoice.json")).unwrap();
        assert_eq!(s.destinations(&event), vec!["bems-prod-eu-1-reconciliation.fifo", "bems-prod-eu-1-status.fifo"]);
        assert_eq!(s.rule_set().matching(&event), vec!["bems-prod-eu-1-reconciliation-p07"]);

        let mut posted = event.clone();
        posted["detail"]["stage"] = json!("posting");
        posted["detail"]["status"] = json!("posted");
        assert_eq!(
            s.destinations(&posted),
            vec!["bems-prod-eu-1-status.fifo"],
            "terminal events only reach the status queue"
        );

        let mut smoke = event.clone();
        smoke["detail"]["invoiceId"] = json!("BEMS-SMOKE-20261201000000-0a1b2c3d");
        smoke["detail"]["metadata"]["partition"] = json!(
            Partition::for_invoice(
                &crate::fields::InvoiceId::new("BEMS-SMOKE-20261201000000-0a1b2c3d").unwrap(),
                s.partitions()
            )
            .get()
        );
        let mut got = s.destinations(&smoke);
        got.sort();
        assert_eq!(
            got,
            vec!["bems-prod-eu-1-reconciliation.fifo", "bems-prod-eu-1-smoke.fifo", "bems-prod-eu-1-status.fifo"],
            "a smoke invoice is also seen by the smoke queue"
        );

        let mut other_cell = event.clone();
        other_cell["detail"]["metadata"]["cellId"] = json!("prod-us-1");
        assert_eq!(s.destinations(&other_cell), vec!["bems-prod-eu-1-unrouted"], "kept, not dropped");
        let mut other_source = event;
        other_source["source"] = json!("acme.invoices");
        assert!(s.destinations(&other_source).is_empty());
    }

    /// Within our source, an event goes to exactly one of: some stage
    /// rule, or the unrouted rule.
    #[test]
    fn the_unrouted_rule_takes_exactly_what_no_stage_rule_takes() {
        let s = spec(3).unwrap();
        let mut base: serde_json::Value =
            serde_json::from_str(include_str!("../../fixtures/example-eventbridge-event-invoice.json")).unwrap();
        base["detail"]["metadata"]["partition"] = json!(2);
        let rules = s.rule_set();
        let unrouted = s.unrouted_pattern();
        let variants: Vec<(&str, &[&str], serde_json::Value)> = vec![
            ("in range", &["detail", "metadata", "partition"], json!(2)),
            ("first", &["detail", "metadata", "partition"], json!(1)),
            ("last", &["detail", "metadata", "partition"], json!(3)),
            ("P + 1", &["detail", "metadata", "partition"], json!(4)),
            ("zero", &["detail", "metadata", "partition"], json!(0)),
            ("fraction", &["detail", "metadata", "partition"], json!(2.5)),
            ("text", &["detail", "metadata", "partition"], json!("2")),
            ("null", &["detail", "metadata", "partition"], json!(null)),
            ("other cell", &["detail", "metadata", "cellId"], json!("prod-us-1")),
            ("cell null", &["detail", "metadata", "cellId"], json!(null)),
            ("unknown stage", &["detail", "stage"], json!("archiving")),
            ("stage as number", &["detail", "stage"], json!(1)),
            ("other detail type", &["detail-type"], json!("Invoice Deleted")),
        ];
        for (what, path, value) in variants {
            let mut event = base.clone();
            let (last, parents) = path.split_last().unwrap();
            let mut slot = &mut event;
            for key in parents {
                slot = &mut slot[*key];
            }
            slot[*last] = value;
            let routed = !rules.matching(&event).is_empty();
            assert_ne!(
                routed,
                unrouted.matches(&event),
                "{what}: routed {routed}, unrouted {}",
                unrouted.matches(&event)
            );
        }
        for path in [&["detail", "metadata"][..], &["detail", "stage"], &["detail"]] {
            let mut event = base.clone();
            let (last, parents) = path.split_last().unwrap();
            let mut slot = &mut event;
            for key in parents {
                slot = &mut slot[*key];
            }
            slot.as_object_mut().unwrap().remove(*last);
            assert!(rules.matching(&event).is_empty() && unrouted.matches(&event), "without {path:?}");
        }
    }
}
