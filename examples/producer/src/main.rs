//! Publishes invoice status events to a cell's bus, as a producer service
//! does: build the event, let the [`Publisher`] place it in the cell
//! (partition, message group, cell metadata), validate it, batch it into
//! `PutEvents` calls and retry what the bus throttles, one invoice's events
//! kept in order.
//!
//! ```sh
//! # against the local reference cell (cargo run -p bems-monitor):
//! AWS_ENDPOINT_URL=http://127.0.0.1:4566 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \
//!   AWS_REGION=eu-west-1 cargo run -p producer -- local 16 000000000000 5
//! ```
//!
//! Arguments: cell id, its partition count, its account, how many invoices
//! (defaults: `local 16 000000000000 5`). Credentials and Region come from
//! the standard AWS chain.

use std::process::ExitCode;

use bems_core::fields::{EventId, InvoiceId};
use bems_core::publish::{CellTarget, Outcome, Publisher};
use bems_core::{InvoiceEvent, PaymentTerms, Stage, Status, Validator};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("producer: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<bool, Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_owned());
    let (cell, account) = (arg(0, "local"), arg(2, "000000000000"));
    let partitions: u32 = arg(1, "16").parse().map_err(|_| "partitions: not a whole number 1-99")?;
    let count: usize = arg(3, "5").parse().map_err(|_| "count: not a whole number")?;

    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let region = sdk.region().ok_or("no AWS Region: set AWS_REGION")?.to_string();
    let target = CellTarget::new(&cell, &region, &account, partitions)?;
    let publisher = Publisher::new(aws_sdk_eventbridge::Client::new(&sdk), target);

    let events = (0..count).map(submitted).collect::<Result<Vec<_>, _>>()?;
    let mut all_accepted = true;
    for outcome in publisher.publish(events).await {
        match outcome {
            Outcome::Accepted { event_id, .. } => println!("accepted {event_id}"),
            other => {
                all_accepted = false;
                println!("not published: {other:?}");
            }
        }
    }
    Ok(all_accepted)
}

/// A newly submitted invoice, `INV-PRODUCER-<n>`. A real producer builds
/// the event from its own records; the fixture saves typing here.
fn submitted(n: usize) -> Result<InvoiceEvent, Error> {
    let fixture = include_bytes!("../../../bems-core/fixtures/example-invoice-event.json");
    let mut e = Validator::default().parse(fixture).map_err(|v| v.to_string())?;
    e.invoice_id = InvoiceId::new(format!("INV-PRODUCER-{n:04}"))?;
    e.event_id = EventId::random();
    e.stage = Stage::Ingestion;
    e.status = Status::Submitted;
    e.previous_status = None;
    e.previous_occurred_at = None;
    e.occurred_at = chrono::Utc::now();
    e.issue_date = e.occurred_at.date_naive();
    e.payment_terms = PaymentTerms::net(e.issue_date, e.payment_terms.net_days);
    Ok(e)
}
