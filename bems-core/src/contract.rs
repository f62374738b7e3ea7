//! The cell's contract: every name by which a deployed cell's parts find
//! each other, defined once.
//!
//! The template generator (`bems-template`), the functions (`bems-lambda`),
//! the operations (`bems-ops`), the dashboard and the tests all derive the
//! names of a cell's resources, the message attributes they set and read,
//! and the metrics they write and chart from here, so that a rename is one
//! edit and no crate can spell a name its neighbour does not:
//!
//! - resource names, as methods of [`CellSpec`]: the bus, its archive, the
//!   topics, queues and dead-letter queues, the rules, the API and its key,
//!   the alert topics, the functions ([`CellSpec::function_name`]), the
//!   stack the emulator cell is deployed as;
//! - message attributes: [`REASON_ATTRIBUTE`] and [`SOURCE_ATTRIBUTE`] on a
//!   dead-lettered record, [`INVOICE_ID_ATTRIBUTE`] on what the route
//!   forwarder publishes;
//! - metrics: [`METRICS_NAMESPACE`], the dimensions, and each function's
//!   `Function` dimension ([`Function::metrics_name`]);
//! - the stores' names: the Timestream table ([`TIMESTREAM_TABLE`]), the
//!   PostgreSQL schema ([`CellSpec::postgres_schema`]), and the
//!   status-change record's columns ([`columns`]);
//! - the synthetic producer the business figures leave out
//!   ([`CANARY_PRODUCER`]);
//! - the functions' configuration: the environment variables the template
//!   sets and the functions read ([`mod@env`]).

use crate::fields::CellId;
use crate::lifecycle::Stage;
use crate::partition::Partition;
use crate::routing::CellSpec;

/// Message attribute carrying why a record was dead-lettered.
pub const REASON_ATTRIBUTE: &str = "bems-poison-reason";

/// Message attribute carrying the queue a dead-lettered record came from.
pub const SOURCE_ATTRIBUTE: &str = "bems-source-queue";

/// The SNS message attribute the route forwarder sets on every message it
/// publishes to a stage topic: the event's invoice id. Filtering on it costs
/// nothing, unlike filtering on the body.
pub const INVOICE_ID_ATTRIBUTE: &str = "invoiceId";

/// The start of a smoke-test invoice's id (`bems smoke`): the smoke queue's
/// subscriptions take exactly these invoices' events.
pub const SMOKE_INVOICE_PREFIX: &str = "BEMS-SMOKE-";

/// The `metadata.producer` of a synthetic invoice (`bems smoke`'s): the
/// stores keep it, with its history, and every business figure (counts,
/// latencies, money on the dashboards) leaves it out.
pub const CANARY_PRODUCER: &str = "bems-canary";

/// How long the smoke queue keeps a message, seconds: an hour is enough
/// for `bems smoke` to read it, and nothing piles up if nobody does.
pub const SMOKE_RETENTION_SECS: u32 = 3600;

/// The id of each rule's one target.
pub const RULE_TARGET_ID: &str = "stage";

/// The CloudWatch namespace of the functions' metrics.
pub const METRICS_NAMESPACE: &str = "BEMS";

/// The metrics' dimension naming the cell.
pub const CELL_DIMENSION: &str = "Cell";

/// The metrics' dimension naming the function ([`Function::metrics_name`]).
pub const FUNCTION_DIMENSION: &str = "Function";

/// The metrics' dimension naming a failure's class (`transient`, ...).
pub const CLASS_DIMENSION: &str = "class";

/// The Timestream table of status changes in [`CellSpec::timestream_database`].
pub const TIMESTREAM_TABLE: &str = "status_changes";

/// The status-change record's columns, as the writer stores them and every
/// reader (history, stuck, smoke, the dashboards) reads them.
pub mod columns {
    /// Dimension: the invoice.
    pub const INVOICE_ID: &str = "invoice_id";
    /// Dimension: the cell.
    pub const CELL_ID: &str = "cell_id";
    /// Dimension: the cell's Region.
    pub const REGION: &str = "region";
    /// Dimension: the invoice's partition.
    pub const PARTITION: &str = "partition";
    /// Dimension: the stage.
    pub const STAGE: &str = "stage";
    /// The multi-measure record's name.
    pub const MEASURE_NAME: &str = "status_change";
    /// Measure: the status.
    pub const STATUS: &str = "status";
    /// Measure: the status before it, if any.
    pub const PREVIOUS_STATUS: &str = "previous_status";
    /// Measure: the event that made the change.
    pub const EVENT_ID: &str = "event_id";
    /// Measure: the amount, at the currency's scale.
    pub const AMOUNT: &str = "amount";
    /// Measure: the ISO 4217 currency.
    pub const CURRENCY: &str = "currency";
    /// Measure: the payment due date.
    pub const DUE_DATE: &str = "due_date";
    /// Measure: the vendor.
    pub const VENDOR_ID: &str = "vendor_id";
    /// Measure: the vendor's country.
    pub const VENDOR_COUNTRY: &str = "vendor_country";
    /// Measure: the payment terms' net days.
    pub const NET_DAYS: &str = "net_days";
    /// Measure: milliseconds since the previous status change.
    pub const STAGE_LATENCY_MS: &str = "stage_latency_ms";
    /// Measure: milliseconds since the invoice was submitted.
    pub const END_TO_END_LATENCY_MS: &str = "end_to_end_latency_ms";
    /// Time: when the status change happened (Timestream's `time`).
    pub const OCCURRED_AT: &str = "occurred_at";
    /// When the invoice was submitted (PostgreSQL only).
    pub const SUBMITTED_AT: &str = "submitted_at";
    /// When the previous status change happened (PostgreSQL only).
    pub const PREVIOUS_OCCURRED_AT: &str = "previous_occurred_at";
    /// The invoice's date (PostgreSQL only).
    pub const ISSUE_DATE: &str = "issue_date";
    /// Why the invoice was rejected (PostgreSQL only).
    pub const REASON: &str = "reason";
    /// The event's `metadata.producer` (PostgreSQL only).
    pub const PRODUCER: &str = "producer";
    /// The row's version: EventBridge's receipt time of the event.
    pub const VERSION: &str = "version";
    /// When the row was first stored (PostgreSQL only).
    pub const STORED_AT: &str = "stored_at";
}

/// The environment variables of the cell's functions: set by the
/// template, read once at start by each function's configuration
/// (`bems_lambda::config`).
pub mod env {
    /// The cell's id.
    pub const CELL_ID: &str = "BEMS_CELL_ID";
    /// Its partition count, 1–99.
    pub const PARTITIONS: &str = "BEMS_PARTITIONS";
    /// The cell's account (the stack's `AWS::AccountId`).
    pub const ACCOUNT_ID: &str = "BEMS_ACCOUNT_ID";
    /// The dead-letter queue of the function's source queue.
    pub const DLQ_URL: &str = "BEMS_DLQ_URL";
    /// The source queue's `maxReceiveCount`.
    pub const MAX_RECEIVE_COUNT: &str = "BEMS_MAX_RECEIVE_COUNT";
    /// The stage processors' idempotency table; empty for none.
    pub const IDEMPOTENCY_TABLE: &str = "BEMS_IDEMPOTENCY_TABLE";
    /// How many days its items live.
    pub const IDEMPOTENCY_TTL_DAYS: &str = "BEMS_IDEMPOTENCY_TTL_DAYS";
    /// The Timestream writer's database.
    pub const TIMESTREAM_DATABASE: &str = "BEMS_TIMESTREAM_DATABASE";
    /// The Timestream writer's table.
    pub const TIMESTREAM_TABLE: &str = "BEMS_TIMESTREAM_TABLE";
    /// The PostgreSQL writer's connection string
    /// (`postgres://user:password@host:port/database`, or the key=value
    /// form); the schema is the cell's ([`crate::routing::CellSpec::postgres_schema`]).
    pub const POSTGRES_URL: &str = "BEMS_POSTGRES_URL";
    /// How the PostgreSQL writer logs in: `password` (the connection
    /// string's, the default) or `iam` (an RDS IAM token per connection,
    /// signed with the function's role; the string then needs
    /// `sslmode=verify-full`).
    pub const POSTGRES_AUTH: &str = "BEMS_POSTGRES_AUTH";
    /// The Region, set by Lambda itself.
    pub const REGION: &str = "AWS_REGION";
}

/// The PostgreSQL database the cells' schemas live in (the cell template's
/// Aurora cluster creates it; the Data API's default).
pub const DATABASE_NAME: &str = "bems";
/// The PostgreSQL store's login of the status writer: it may insert and
/// update the status tables, nothing else (`bems_store::postgres::roles`);
/// the cell template grants the writer's function `rds-db:connect` as it.
pub const DB_WRITER: &str = "bems_writer";
/// The PostgreSQL store's login of the readers (CLI, monitor, BI tools):
/// `SELECT` only; on RDS and Aurora with IAM tokens only.
pub const DB_READER: &str = "bems_reader";
/// The readers' password login, for the RDS Data API (which logs in with a
/// secret's password, not an IAM token): `SELECT` only, like
/// [`DB_READER`]; its password is the cell template's
/// `DatabaseReaderSecret`, set by `bems store migrate`.
pub const DB_API_READER: &str = "bems_api_reader";

/// A function of the cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Function {
    /// A stage's processor.
    Processor(Stage),
    /// The route forwarder (route queues to stage topics).
    RouteForwarder,
    /// The status writer (status queue to the store).
    StatusWriter,
}

impl Function {
    /// Every function: the four processors, the forwarder, the writer.
    pub const ALL: [Function; 6] = [
        Function::Processor(Stage::Ingestion),
        Function::Processor(Stage::Reconciliation),
        Function::Processor(Stage::Authorization),
        Function::Processor(Stage::Posting),
        Function::RouteForwarder,
        Function::StatusWriter,
    ];

    /// Its `Function` metrics dimension, and the end of its Lambda
    /// function's name: `ingestion-processor`, `route-forwarder`,
    /// `status-writer` (either store's writer).
    pub fn metrics_name(self) -> String {
        match self {
            Function::Processor(stage) => format!("{stage}-processor"),
            Function::RouteForwarder => "route-forwarder".to_owned(),
            Function::StatusWriter => "status-writer".to_owned(),
        }
    }

    /// Its binary in `bems-lambda`: `invoice-ingestion-processor`, ...
    pub fn binary(self) -> String {
        match self {
            Function::Processor(stage) => format!("invoice-{stage}-processor"),
            Function::RouteForwarder => "route-forwarder".to_owned(),
            Function::StatusWriter => POSTGRES_WRITER_BINARY.to_owned(),
        }
    }
}

/// The status writer's binary for the PostgreSQL store (the default).
pub const POSTGRES_WRITER_BINARY: &str = "postgres-writer";
/// The status writer's binary for Timestream for LiveAnalytics.
pub const TIMESTREAM_WRITER_BINARY: &str = "timestream-writer";

/// The bus of the cell `cell`: `bems-<cell>`.
pub fn bus_name(cell: &CellId) -> String {
    format!("bems-{cell}")
}

/// The store name of the cell `cell`: `bems_<cell>` with `_` for `-`
/// (neither Timestream nor an unquoted SQL identifier takes a hyphen).
pub fn store_name(cell: &CellId) -> String {
    format!("bems_{}", cell.as_str().replace('-', "_"))
}

/// The statement that makes the monthly partitions of the store schema
/// `schema` from the time `from` for `months` months ahead (SQL
/// expressions), through the schema's `ensure_partitions` function
/// (bems-store's migration 0003): what `bems store partitions` runs and
/// what the cell template's daily schedule sends through the Data API.
pub fn ensure_partitions_sql(schema: &str, from: &str, months: &str) -> String {
    format!("SELECT partition_name, created, moved FROM {schema}.ensure_partitions({from}, {months})")
}

/// The statement that fails, naming the count and the range, while status
/// changes wait in the store schema `schema`'s default partition (the
/// template's daily check).
pub fn check_default_partition_sql(schema: &str) -> String {
    format!("SELECT {schema}.check_default_partition()")
}

impl CellSpec {
    fn prefix(&self) -> String {
        bus_name(self.cell_id())
    }
    /// The custom event bus.
    pub fn bus_name(&self) -> String {
        self.prefix()
    }
    /// The bus's archive (for replay).
    pub fn archive_name(&self) -> String {
        format!("{}-archive", self.prefix())
    }
    /// The stage's SNS FIFO topic.
    pub fn topic_name(&self, stage: Stage) -> String {
        format!("{}-{stage}.fifo", self.prefix())
    }
    /// The stage's SQS FIFO queue.
    pub fn queue_name(&self, stage: Stage) -> String {
        format!("{}-{stage}.fifo", self.prefix())
    }
    /// The stage queue's dead-letter queue.
    pub fn dlq_name(&self, stage: Stage) -> String {
        format!("{}-{stage}-dlq.fifo", self.prefix())
    }
    /// The stage rules' target: an SQS FIFO queue, because a classic rule
    /// can give only an SQS FIFO target a message group.
    pub fn route_queue_name(&self, stage: Stage) -> String {
        format!("{}-{stage}-route.fifo", self.prefix())
    }
    /// The route queue's dead-letter queue.
    pub fn route_dlq_name(&self, stage: Stage) -> String {
        format!("{}-{stage}-route-dlq.fifo", self.prefix())
    }
    /// The stage whose route queue is `queue_name`, if any.
    pub fn stage_of_route_queue(&self, queue_name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| self.route_queue_name(*s) == queue_name)
    }
    /// The FIFO queue subscribed to every stage topic for smoke-test
    /// invoices only ([`CellSpec::smoke_filter_policy`]): where `bems smoke`
    /// sees its invoice pass each stage, without reading a queue any
    /// function reads.
    pub fn smoke_queue_name(&self) -> String {
        format!("{}-smoke.fifo", self.prefix())
    }
    /// The standard queue that keeps events of our source no stage rule
    /// routes (see the module docs).
    pub fn unrouted_queue_name(&self) -> String {
        format!("{}-unrouted", self.prefix())
    }
    /// The rule that delivers them there.
    pub fn unrouted_rule_name(&self) -> String {
        format!("{}-unrouted", self.prefix())
    }
    /// The Timestream database of the cell's status changes.
    pub fn timestream_database(&self) -> String {
        store_name(self.cell_id())
    }
    /// The PostgreSQL schema of the cell's store: its tables, rollups and
    /// migrations, so that cells can share a database.
    pub fn postgres_schema(&self) -> String {
        store_name(self.cell_id())
    }
    /// The status-change queue the Timestream writer reads.
    pub fn status_queue_name(&self) -> String {
        format!("{}-status.fifo", self.prefix())
    }
    /// The status-change queue's dead-letter queue.
    pub fn status_dlq_name(&self) -> String {
        format!("{}-status-dlq.fifo", self.prefix())
    }
    /// The rule for (stage, partition).
    pub fn rule_name(&self, stage: Stage, partition: Partition) -> String {
        format!("{}-{stage}-p{partition}", self.prefix())
    }
    /// ARN of the bus.
    pub fn bus_arn(&self) -> String {
        format!("arn:aws:events:{}:{}:event-bus/{}", self.region(), self.account_id(), self.bus_name())
    }
    /// ARN of the stage's topic.
    pub fn topic_arn(&self, stage: Stage) -> String {
        format!("arn:aws:sns:{}:{}:{}", self.region(), self.account_id(), self.topic_name(stage))
    }
    /// ARN of a queue of this cell, by name.
    pub fn queue_arn(&self, queue_name: &str) -> String {
        format!("arn:aws:sqs:{}:{}:{queue_name}", self.region(), self.account_id())
    }

    /// The standard queue EventBridge sends what it cannot deliver to.
    pub fn bus_dlq_name(&self) -> String {
        format!("{}-bus-dlq", self.prefix())
    }
    /// The standard queue where the store's daily upkeep statements go
    /// when they fail after their retries (EventBridge Scheduler's
    /// dead-letter queue: Scheduler takes no FIFO queue).
    pub fn store_upkeep_dlq_name(&self) -> String {
        format!("{}-store-upkeep-dlq", self.prefix())
    }
    /// The REST API.
    pub fn api_name(&self) -> String {
        format!("{}-ingress", self.prefix())
    }
    /// The producers' API key and usage plan.
    pub fn producers_name(&self) -> String {
        format!("{}-producers", self.prefix())
    }
    /// The alert topic of a severity (`critical`, `warning`).
    pub fn alerts_topic_name(&self, severity: &str) -> String {
        format!("{}-alerts-{severity}", self.prefix())
    }
    /// The alias of the cell's customer managed key.
    pub fn key_alias(&self) -> String {
        format!("alias/{}", self.prefix())
    }
    /// A function's Lambda name: `bems-<cell>-ingestion-processor`.
    pub fn function_name(&self, function: Function) -> String {
        format!("{}-{}", self.prefix(), function.metrics_name())
    }
    /// The CloudWatch operations dashboard.
    pub fn dashboard_name(&self) -> String {
        self.prefix()
    }
    /// The CloudFormation stack the emulator cell is deployed as
    /// (`bems provision`).
    pub fn stack_name(&self) -> String {
        self.prefix()
    }
    /// A name of the cell's own (`bems-<cell>-<suffix>`), for resources
    /// named once, where they are made (alarms, Config rules).
    pub fn resource_name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::{AccountId, Region};
    use crate::partition::PartitionCount;

    #[test]
    fn names_share_the_cell_prefix() {
        let spec = CellSpec::new(
            CellId::new("c1").unwrap(),
            Region::new("eu-west-1").unwrap(),
            AccountId::new("123456789012").unwrap(),
            PartitionCount::new(2).unwrap(),
        )
        .unwrap();
        assert_eq!(spec.function_name(Function::Processor(Stage::Posting)), "bems-c1-posting-processor");
        assert_eq!(Function::Processor(Stage::Posting).binary(), "invoice-posting-processor");
        assert_eq!(spec.function_name(Function::StatusWriter), "bems-c1-status-writer");
        assert_eq!(Function::StatusWriter.binary(), POSTGRES_WRITER_BINARY);
        assert_eq!(spec.bus_dlq_name(), "bems-c1-bus-dlq");
        assert_eq!(spec.queue_arn(&spec.status_queue_name()), "arn:aws:sqs:eu-west-1:123456789012:bems-c1-status.fifo");
        assert_eq!(bus_name(spec.cell_id()), spec.bus_name());
    }
}
