//! # bems-e2e
//!
//! Shared set-up for the end-to-end tests in `tests/tests/`: a uniquely
//! named cell provisioned on the running LocalStack, its emulator shim, and
//! helpers to publish and drain. The tests run when `BEMS_LOCALSTACK_URL` is
//! set (`scripts/test` sets it) and say they are skipped otherwise.

use std::time::{Duration, Instant};

use aws_sdk_sqs::config::Credentials;
use bems_cli::api::Ingress;
use bems_cli::provision::{Clients, ProvisionOptions, Report, Targets, provision};
use bems_core::fields::{AccountId, CellId, CorrelationId, EventId, InvoiceId, Region};
use bems_core::partition::PartitionCount;
use bems_core::publish::{CellTarget, Publisher};
use bems_core::routing::CellSpec;
use bems_core::{InvoiceEvent, Stage, Status};
use serde_json::Value;
use tokio::sync::oneshot;

/// The LocalStack account and Region every test cell lives in.
pub const ACCOUNT: &str = "000000000000";
/// See [`ACCOUNT`].
pub const REGION: &str = "us-east-1";

/// The AWS configuration for LocalStack, or `None` (test skipped) when
/// `BEMS_LOCALSTACK_URL` is not set.
pub async fn localstack() -> Option<aws_config::SdkConfig> {
    let Ok(url) = std::env::var("BEMS_LOCALSTACK_URL") else {
        eprintln!("skipped: BEMS_LOCALSTACK_URL is not set (scripts/test sets it after starting the emulators)");
        return None;
    };
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(url)
        .region(aws_config::Region::new(REGION))
        .credentials_provider(Credentials::new("test", "test", None, None, "bems-e2e"))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(30))
                .connect_timeout(Duration::from_secs(5))
                .build(),
        )
        .load()
        .await;
    Some(config)
}

/// A provisioned cell with its shim running; the shim stops on drop.
pub struct Cell {
    /// The cell's routing.
    pub spec: CellSpec,
    /// Clients for the emulator.
    pub clients: Clients,
    /// What provisioning reported.
    pub report: Report,
    /// The options it was provisioned with.
    pub options: ProvisionOptions,
    /// Its HTTP ingress.
    pub ingress: Ingress,
    stop_shim: Option<oneshot::Sender<()>>,
}

impl Cell {
    /// Provisions a new cell named `e2e-<random>` with `partitions` partitions.
    pub async fn create(config: &aws_config::SdkConfig, partitions: u32, options: ProvisionOptions) -> Cell {
        let id = format!("e2e-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let spec = CellSpec::new(
            CellId::new(id).expect("cell id"),
            Region::new(REGION).expect("region"),
            AccountId::new(ACCOUNT).expect("account"),
            PartitionCount::new(partitions).expect("partitions"),
        )
        .expect("cell within quotas");
        let clients = Clients::new(config);
        let options = ProvisionOptions { targets: Targets::EmulatorShim, ..options };
        let done = provision(&clients, &spec, &options)
            .await
            .unwrap_or_else(|e| panic!("provisioning failed: {e}. Is LocalStack running? (scripts/emulators status)"));
        let (stop_shim, stopped) = oneshot::channel();
        tokio::spawn(bems_cli::shim::run(clients.clone(), spec.clone(), Duration::from_millis(100), async move {
            let _ = stopped.await;
        }));
        Cell { spec, clients, report: done.report, options, ingress: done.ingress, stop_shim: Some(stop_shim) }
    }

    /// A publisher for this cell.
    pub fn publisher(&self) -> Publisher<aws_sdk_eventbridge::Client> {
        let target = CellTarget {
            bus: self.spec.bus_name(),
            cell_id: self.spec.cell_id().clone(),
            region: self.spec.region().clone(),
            account_id: self.spec.account_id().clone(),
            partitions: self.spec.partitions(),
        };
        Publisher::new(self.clients.events.clone(), target)
    }

    /// The URL of one of the cell's queues.
    pub async fn queue_url(&self, name: &str) -> String {
        self.clients
            .sqs
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("queue {name}: {e}"))
            .queue_url()
            .unwrap_or_default()
            .to_owned()
    }

    /// Receives and deletes from `queue` until `expected` (> 0) messages
    /// arrived and the queue is empty, or until `quiet` passed without a
    /// message. With `expected == 0` it always waits the full `quiet`
    /// period, so "nothing arrived" means nothing arrived in that time.
    /// Returns the bodies in receive order.
    pub async fn drain(&self, queue: &str, expected: usize, quiet: Duration) -> Vec<Value> {
        let url = self.queue_url(queue).await;
        let mut bodies = Vec::new();
        let mut last = Instant::now();
        while last.elapsed() < quiet {
            let batch = self
                .clients
                .sqs
                .receive_message()
                .queue_url(&url)
                .max_number_of_messages(10)
                .wait_time_seconds(if expected > 0 && bodies.len() >= expected { 0 } else { 1 })
                .send()
                .await
                .unwrap_or_else(|e| panic!("receive from {queue}: {e}"));
            if batch.messages().is_empty() {
                if expected > 0 && bodies.len() >= expected {
                    break;
                }
                continue;
            }
            last = Instant::now();
            for m in batch.messages() {
                bodies.push(serde_json::from_str(m.body().unwrap_or("null")).unwrap_or(Value::Null));
                self.clients
                    .sqs
                    .delete_message()
                    .queue_url(&url)
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("delete from {queue}: {e}"));
            }
        }
        bodies
    }
}

impl Drop for Cell {
    fn drop(&mut self) {
        if let Some(stop) = self.stop_shim.take() {
            let _ = stop.send(());
        }
    }
}

/// A valid event of `invoice`: the fixture with a fresh id, moved to
/// `stage`/`status` after `previous`, with `seq` in its correlation id.
pub fn event(invoice: &str, stage: Stage, status: Status, previous: Option<Status>, seq: u32) -> InvoiceEvent {
    let mut e = InvoiceEvent::from_json(include_bytes!("../../bems-core/fixtures/example-invoice-event.json"))
        .expect("fixture");
    e.event_id = EventId::random();
    e.invoice_id = InvoiceId::new(invoice).expect("invoice id");
    e.stage = stage;
    e.status = status;
    e.previous_status = previous;
    e.occurred_at = chrono::Utc::now();
    e.metadata.correlation_id = CorrelationId::new(format!("seq-{seq}")).expect("correlation id");
    e
}
