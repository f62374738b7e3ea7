//! A tour of `bems-core`, no AWS account or emulator needed:
//!
//! 1. build an invoice event in code and check it,
//! 2. place it in a cell (partition, FIFO message group, deduplication id),
//! 3. wrap it for EventBridge `PutEvents`,
//! 4. decode it from each shape a consumer receives,
//! 5. validate a broken payload and print every problem.
//!
//! `cargo run -p quickstart -- FILE...` validates event files instead and
//! exits with 1 if any is invalid.

use std::process::ExitCode;

use bems_core::envelope::{PutEventsEntry, decode_body};
use bems_core::fields::{
    AccountId, CellId, CorrelationId, CountryCode, EventId, InvoiceId, Producer, Region, TaxId, VendorId, VendorName,
};
use bems_core::partition::{deduplication_id, message_group_id};
use bems_core::{
    Amount, Currency, InvoiceEvent, Metadata, NetDays, Partition, PartitionCount, PaymentTerms, SCHEMA_VERSION, Stage,
    Status, ValidationOptions, Validator, Vendor,
};
use chrono::{NaiveDate, Utc};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let files: Vec<String> = std::env::args().skip(1).collect();
    let outcome = if files.is_empty() { tour() } else { validate_files(&files) };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn validate_files(files: &[String]) -> Result<bool> {
    let validator = Validator::default();
    let mut all_valid = true;
    for file in files {
        let bytes = std::fs::read(file).map_err(|e| format!("{file}: {e}"))?;
        match validator.parse(&bytes) {
            Ok(event) => println!("{file}: valid ({} {} -> {})", event.invoice_id, event.status, event.stage),
            Err(problems) => {
                all_valid = false;
                println!("{file}: invalid");
                for p in problems.as_slice() {
                    println!("  {p}");
                }
            }
        }
    }
    Ok(all_valid)
}

fn tour() -> Result<bool> {
    let cells = [1, 16, 99].map(PartitionCount::new).into_iter().collect::<std::result::Result<Vec<_>, _>>()?;

    println!("== 1. An invoice event, built in code ==");
    let invoice_id = InvoiceId::new("INV-2026-004711")?;
    let issue_date = NaiveDate::from_ymd_opt(2026, 11, 20).ok_or("bad date")?;
    let event = example(invoice_id.clone(), issue_date, Partition::for_invoice(&invoice_id, cells[1]))?;
    event.check(&ValidationOptions::default(), Utc::now())?;
    println!("{}\n", serde_json::to_string_pretty(&event)?);

    println!("== 2. Where it goes in a cell ==");
    for cell in cells {
        let p = Partition::for_invoice(&event.invoice_id, cell);
        println!(
            "{:>2} partitions: partition {:>2}, message group {}",
            cell.get(),
            p.get(),
            message_group_id(event.stage, p)
        );
    }
    println!("deduplication id: {}", deduplication_id(&event.event_id));
    println!(
        "xxh64(\"{}\") = {:#018x}\n",
        event.invoice_id,
        bems_core::partition::stable_hash(event.invoice_id.as_str().as_bytes())
    );

    println!("== 3. The PutEvents entry a producer sends ==");
    let entry = PutEventsEntry::for_event(&event, "bems-demo");
    println!(
        "Source={} DetailType={:?} size={} bytes (limit per request: 1 MiB)\n",
        entry.source,
        entry.detail_type,
        entry.size()
    );

    println!("== 4. Decoding what a consumer receives ==");
    let validator = Validator::default();
    for (name, body) in [
        ("raw SQS body", include_str!("../../../bems-core/fixtures/example-invoice-event.json")),
        ("EventBridge event", include_str!("../../../bems-core/fixtures/example-eventbridge-event-invoice.json")),
        ("SNS envelope", include_str!("../../../bems-core/fixtures/example-sns-notification-eventbridge.json")),
    ] {
        let d = decode_body(body, &validator)?;
        println!(
            "{name:>18}: shape {:?}, invoice {} {} {} {}",
            d.shape, d.event.invoice_id, d.event.status, d.event.amount, d.event.currency
        );
    }
    println!();

    println!("== 5. A broken payload: every problem at once ==");
    let broken = event
        .to_json()
        .replace(r#""currency":"EUR""#, r#""currency":"EURO""#)
        .replace(r#""amount":18250.75"#, r#""amount":"18250.755""#)
        .replace(r#""country":"AT""#, r#""country":"Austria""#)
        .replace(r#""netDays":60"#, r#""netDays":400,"discount":2"#);
    match validator.parse(broken.as_bytes()) {
        Ok(_) => return Err("the broken payload was accepted".into()),
        Err(problems) => {
            for p in problems.as_slice() {
                println!("  {p}");
            }
            println!("\nas JSON (what the API returns): {}", serde_json::to_string(&problems)?);
        }
    }
    println!("\nNext: `cargo run -p quickstart -- bems-core/fixtures/invalid/*.json` validates files;");
    println!("the JSON Schemas API Gateway uses are in bems-schema/schemas/.");
    Ok(true)
}

fn example(invoice_id: InvoiceId, issue_date: NaiveDate, partition: Partition) -> Result<InvoiceEvent> {
    Ok(InvoiceEvent {
        event_id: EventId::random(),
        invoice_id,
        stage: Stage::Authorization,
        status: Status::Reconciled,
        previous_status: Some(Status::Ingested),
        reason: None,
        amount: Amount::from_json_number("18250.75")?,
        currency: Currency::new("EUR")?,
        occurred_at: Utc::now(),
        // The stages fill these in; a producer's event may leave them out.
        previous_occurred_at: None,
        submitted_at: None,
        issue_date,
        vendor: Vendor {
            id: VendorId::new("V-2203")?,
            name: VendorName::new("Alpenländische Maschinenbau AG")?,
            country: CountryCode::new("AT")?,
            tax_id: Some(TaxId::new("ATU12345678")?),
        },
        payment_terms: PaymentTerms::net(issue_date, NetDays::new(60)?),
        metadata: Metadata {
            schema_version: SCHEMA_VERSION,
            region: Region::new("eu-central-1")?,
            account_id: AccountId::new("123456789012")?,
            cell_id: CellId::new("demo")?,
            partition,
            correlation_id: CorrelationId::new("quickstart-1")?,
            producer: Producer::new("quickstart")?,
        },
    })
}
