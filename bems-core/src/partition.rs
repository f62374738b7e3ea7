//! Partitions, FIFO message groups and deduplication ids.
//!
//! A cell is split into `P` partitions, 1 ≤ P ≤ 99. An invoice's partition is
//!
//! ```text
//! partition = xxh64(invoiceId as UTF-8 bytes, seed 0) mod P + 1
//! ```
//!
//! XXH64 is specified (<https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md>),
//! has implementations in every language a producer may be written in (Python's
//! `xxhash.xxh64_intdigest`, Java's `net.openhft.hashing`, Go's
//! `cespare/xxhash`), and its output never changes between versions,
//! processes or machines, unlike `std`'s `DefaultHasher`. Golden values in
//! the tests pin it.
//!
//! Ordering: every event of one invoice lands in one partition, and each
//! (stage, partition) pair is one FIFO message group, so one invoice's events
//! are delivered in order within a stage while up to `P` groups per stage are
//! processed in parallel.

use std::fmt;
use std::num::NonZeroU8;

use serde::Serialize;

use crate::fields::{EventId, InvoiceId};
use crate::lifecycle::Stage;
use crate::violation::{Code, FieldError};

/// The most partitions a cell may have. It keeps rules per bus and message
/// groups per queue inside AWS quotas; the routing spec does the arithmetic.
pub const MAX_PARTITIONS: u8 = 99;

/// How many partitions a cell has: 1–99.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct PartitionCount(NonZeroU8);

impl PartitionCount {
    /// Checks the range.
    pub fn new(count: u32) -> Result<PartitionCount, FieldError> {
        u8::try_from(count)
            .ok()
            .filter(|c| *c <= MAX_PARTITIONS)
            .and_then(NonZeroU8::new)
            .map(PartitionCount)
            .ok_or_else(|| {
                FieldError::new(Code::OutOfRange, format!("a cell has 1 to {MAX_PARTITIONS} partitions, got {count}"))
            })
    }

    /// The count.
    pub const fn get(self) -> u8 {
        self.0.get()
    }

    /// Every partition of the cell, in order.
    pub fn partitions(self) -> impl Iterator<Item = Partition> {
        (1..=self.get()).map(Partition)
    }
}

/// One partition of a cell, numbered from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Partition(u8);

impl Partition {
    /// Checks the range 1–[`MAX_PARTITIONS`].
    pub fn new(number: i64) -> Result<Partition, FieldError> {
        u8::try_from(number).ok().filter(|n| (1..=MAX_PARTITIONS).contains(n)).map(Partition).ok_or_else(|| {
            FieldError::new(Code::OutOfRange, format!("must be between 1 and {MAX_PARTITIONS}, got {number}"))
        })
    }

    /// The partition of `invoice_id` in a cell of `count` partitions.
    pub fn for_invoice(invoice_id: &InvoiceId, count: PartitionCount) -> Partition {
        let hash = stable_hash(invoice_id.as_str().as_bytes());
        // The remainder is below `count` ≤ 99, so it fits in a u8.
        let index = u8::try_from(hash % u64::from(count.get())).unwrap_or(0);
        Partition(index + 1)
    }

    /// The number, 1-based.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// Whether the partition exists in a cell of `count` partitions.
    pub fn fits(self, count: PartitionCount) -> bool {
        self.0 <= count.get()
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}", self.0)
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for Partition {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Partition".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "integer", "minimum": 1, "maximum": MAX_PARTITIONS })
    }
}

/// XXH64 with seed 0: the hash behind partitioning. Public so that tools can
/// show it and other implementations can check themselves against it.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(bytes, 0)
}

/// The FIFO `MessageGroupId` of a (stage, partition): `ingestion-p07`.
///
/// Short, stable and readable in the console; within SQS's 128-character
/// limit and alphabet.
pub fn message_group_id(stage: Stage, partition: Partition) -> String {
    format!("{stage}-p{partition}")
}

/// The FIFO `MessageDeduplicationId` of an event: its id. SQS and SNS drop
/// a second message with the same id within five minutes; consumers keep
/// their own idempotency beyond that window.
pub fn deduplication_id(event_id: &EventId) -> String {
    event_id.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(s: &str) -> InvoiceId {
        InvoiceId::new(s).unwrap()
    }

    fn count(n: u32) -> PartitionCount {
        PartitionCount::new(n).unwrap()
    }

    /// Golden values, computed once and checked against an independent
    /// implementation (Python `xxhash` 3.x: `xxhash.xxh64_intdigest(s.encode())`).
    /// If this test fails, partitioning changed and every deployed cell would
    /// re-route in-flight invoices: do not "fix" the numbers.
    #[test]
    fn hash_and_partitions_match_golden_values() {
        let golden: &[(&str, u64, u8, u8)] = &[
            // (invoice id, xxh64, partition of 16, partition of 99)
            ("INV-2026-000001", GOLDEN[0], GOLDEN_P16[0], GOLDEN_P99[0]),
            ("INV-2026-000002", GOLDEN[1], GOLDEN_P16[1], GOLDEN_P99[1]),
            ("4500012345", GOLDEN[2], GOLDEN_P16[2], GOLDEN_P99[2]),
            ("acme/inv#77", GOLDEN[3], GOLDEN_P16[3], GOLDEN_P99[3]),
        ];
        for &(invoice, hash, p16, p99) in golden {
            assert_eq!(stable_hash(invoice.as_bytes()), hash, "{invoice}");
            assert_eq!(Partition::for_invoice(&id(invoice), count(16)).get(), p16, "{invoice}");
            assert_eq!(Partition::for_invoice(&id(invoice), count(99)).get(), p99, "{invoice}");
        }
        assert_eq!(stable_hash(b""), 0xEF46_DB37_51D8_E999, "XXH64 of the empty input, seed 0 (from the spec)");
    }

    const GOLDEN: [u64; 4] =
        [0x4D12_69B6_398B_5CED, 0xE80F_5C8E_189D_1A6D, 0x8B0F_8F20_9103_38B1, 0x98A0_BB66_5FE9_1A5D];
    const GOLDEN_P16: [u8; 4] = [14, 14, 2, 14];
    const GOLDEN_P99: [u8; 4] = [77, 81, 36, 17];

    #[test]
    fn counts_and_partitions_are_range_checked() {
        assert_eq!(PartitionCount::new(0).unwrap_err().code, Code::OutOfRange);
        assert_eq!(PartitionCount::new(100).unwrap_err().code, Code::OutOfRange);
        assert_eq!(count(99).partitions().count(), 99);
        assert_eq!(Partition::new(0).unwrap_err().code, Code::OutOfRange);
        assert_eq!(Partition::new(100).unwrap_err().code, Code::OutOfRange);
        assert_eq!(Partition::new(-1).unwrap_err().code, Code::OutOfRange);
        assert!(Partition::new(7).unwrap().fits(count(7)));
        assert!(!Partition::new(8).unwrap().fits(count(7)));
    }

    #[test]
    fn group_and_dedup_ids() {
        let p = Partition::new(7).unwrap();
        assert_eq!(message_group_id(Stage::Ingestion, p), "ingestion-p07");
        let e = EventId::parse("0b9c6f5e-3c1f-4d8e-9a51-2f7f2c1d4e11").unwrap();
        assert_eq!(deduplication_id(&e), "0b9c6f5e-3c1f-4d8e-9a51-2f7f2c1d4e11");
    }

    /// 1,000,000 sequential invoice ids (the worst realistic case: ids that
    /// differ in their last digits) spread over every partition count with a
    /// chi-square statistic below the 0.001 critical value of its degrees of
    /// freedom. The ids are fixed, so the test is deterministic.
    #[test]
    fn one_million_sequential_ids_spread_uniformly() {
        let ids: Vec<InvoiceId> = (0..1_000_000).map(|i| id(&format!("INV-2026-{i:07}"))).collect();
        for p in [2_u32, 7, 16, 64, 99] {
            let mut buckets = vec![0_u64; p as usize];
            for invoice in &ids {
                buckets[usize::from(Partition::for_invoice(invoice, count(p)).get() - 1)] += 1;
            }
            let expected = ids.len() as f64 / f64::from(p);
            let chi2: f64 = buckets.iter().map(|&o| (o as f64 - expected).powi(2) / expected).sum();
            let critical = chi_square_critical_0001(p - 1);
            assert!(chi2 < critical, "P={p}: chi2 {chi2:.1} >= {critical:.1}; buckets {buckets:?}");
            let (min, max) = (buckets.iter().min().unwrap(), buckets.iter().max().unwrap());
            assert!((*max as f64) / (*min as f64) < 1.1, "P={p}: max/min {max}/{min}");
        }
    }

    /// Upper 0.001 critical value of chi-square with `df` degrees of freedom,
    /// by the Wilson–Hilferty approximation (within 1% for df ≥ 1).
    fn chi_square_critical_0001(df: u32) -> f64 {
        let k = f64::from(df);
        let z = 3.090_232; // standard normal quantile for p = 0.999
        k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3)
    }

    proptest! {
        #[test]
        fn partition_is_in_range_and_depends_only_on_the_id(s in "[A-Za-z0-9][A-Za-z0-9._:/#-]{0,63}", p in 1_u32..=99) {
            let invoice = id(&s);
            let a = Partition::for_invoice(&invoice, count(p));
            prop_assert!((1..=p).contains(&u32::from(a.get())));
            // Same input, fresh value: no hidden state, no per-process seed.
            let again = Partition::for_invoice(&InvoiceId::new(s.clone()).unwrap(), count(p));
            prop_assert_eq!(a, again);
        }
    }
}
