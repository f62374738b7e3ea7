//! `bems`: the BEMS operator CLI. Thin: parsing and printing only.
//!
//! Exit codes, for scripts: 0 success (for `stuck`: nothing is stuck), 1 the
//! operation failed, 2 bad arguments, 3 the event given to `send` is
//! invalid (nothing was sent), 4 `stuck` found stuck invoices (and `store
//! check` a problem with the store), 5 the `smoke` invoice stopped.

use anyhow::Context;
use bems_core::Stage;
use bems_core::fields::{AccountId, CellId, Region};
use bems_core::partition::PartitionCount;
use bems_core::routing::{CellSpec, Quotas};
use bems_ops::provision::{Clients, ProvisionOptions, provision};
use clap::{Args, Parser, Subcommand};
use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "bems",
    version,
    about = "Operate BEMS cells: provision, tear down, write the template, smoke-test a deployment; find stuck invoices, redrive, replay, show history, send events; migrate, partition, check and export the store."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Deploy a cell on LocalStack (AWS_ENDPOINT_URL): the cell template's emulator part, as a CloudFormation stack; safe to run again. On AWS, deploy the template with sam deploy.
    Provision {
        #[command(flatten)]
        cell: CellArgs,
        /// Receives before a message moves to its dead-letter queue.
        #[arg(long, default_value_t = 5)]
        max_receive_count: u32,
        /// Visibility timeout of the stage queues, in seconds.
        #[arg(long, default_value_t = 180)]
        visibility_timeout: u32,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a cell deployed by provision (its queues' messages included).
    Teardown {
        #[command(flatten)]
        cell: CellArgs,
        /// Required: confirms that messages in the cell's queues may be lost.
        #[arg(long)]
        yes: bool,
    },
    /// List stuck invoices: messages in the cell's dead-letter queues, and invoices whose latest status change is older than the SLA (exit 4 when any).
    Stuck {
        #[command(flatten)]
        cell: CellArgs,
        /// The SLA: a non-terminal status older than this many seconds is stuck.
        #[arg(long, default_value_t = 120)]
        sla: u32,
        /// How far back to look in the store, hours.
        #[arg(long, default_value_t = 24)]
        window_hours: u32,
        /// Only the dead-letter queues (no store query).
        #[arg(long)]
        dlq_only: bool,
        #[command(flatten)]
        store: StoreArgs,
        /// Publish one alert per newly stuck invoice to this SNS topic.
        #[arg(long, requires = "state")]
        alert_topic: Option<String>,
        /// File remembering what was alerted, so each stuck invoice alerts once.
        #[arg(long)]
        state: Option<std::path::PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Move dead-lettered messages back to their queue (FIFO-safe): all of them, or one invoice's.
    Redrive {
        #[command(flatten)]
        cell: CellArgs,
        /// Which DLQ: a stage (ingestion, reconciliation, authorization, posting), a route queue (`<stage>-route`), or status.
        #[arg(long)]
        queue: String,
        /// Only this invoice's messages.
        #[arg(long)]
        invoice: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put the archived events of a time window back on the cell's bus (AWS only).
    Replay {
        #[command(flatten)]
        cell: CellArgs,
        /// Start of the window, RFC 3339 (2026-11-30T00:00:00Z).
        #[arg(long)]
        from: chrono::DateTime<chrono::Utc>,
        /// End of the window, RFC 3339.
        #[arg(long)]
        to: chrono::DateTime<chrono::Utc>,
        /// Wait up to this many seconds for the replay to complete.
        #[arg(long)]
        wait: Option<u64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show an invoice's whole lifecycle from the cell's store, oldest first.
    History {
        #[command(flatten)]
        cell: CellArgs,
        #[command(flatten)]
        store: StoreArgs,
        /// The invoice id.
        invoice: String,
        /// Every version of each status change (the first write and each correction; PostgreSQL only).
        #[arg(long)]
        versions: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Operate the cell's PostgreSQL store: migrate, make partitions, check.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Export the status changes of a period for an auditor (PostgreSQL): a CSV or JSON-lines file and its manifest (row count, SHA-256, bounds).
    Export {
        #[command(flatten)]
        cell: CellArgs,
        /// The store's connection string.
        #[arg(long, env = "BEMS_POSTGRES_URL", hide_env_values = true)]
        postgres_url: String,
        /// Start of the period (inclusive), RFC 3339.
        #[arg(long)]
        from: chrono::DateTime<chrono::Utc>,
        /// End of the period (exclusive), RFC 3339.
        #[arg(long)]
        to: chrono::DateTime<chrono::Utc>,
        /// csv or jsonl.
        #[arg(long, value_parser = ["csv", "jsonl"], default_value = "csv")]
        format: String,
        /// The file to write; its manifest goes beside it (`<out>.manifest.json`).
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Validate one invoice event (a JSON file, or - for standard input) and put it on the cell's bus (exit 3 when invalid).
    Send {
        #[command(flatten)]
        cell: CellArgs,
        /// The event file; - reads standard input.
        #[arg(default_value = "-")]
        file: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send one marked invoice through the cell's API and follow it through every stage into the store; says where it stopped (exit 5).
    Smoke {
        #[command(flatten)]
        cell: CellArgs,
        /// The API's URL up to the stage, as the stack's ApiUrl output gives it; default: the cell's API, found by name.
        #[arg(long)]
        api_url: Option<String>,
        /// The producers' API key; default: the cell's key, found by name.
        #[arg(long, env = "BEMS_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// Seconds to wait for each next step.
        #[arg(long, default_value_t = 180)]
        timeout: u64,
        /// The cell's store, as deployed: postgres (with --postgres-url), timestream, or none to follow the stages only.
        #[arg(long, value_parser = ["postgres", "timestream", "none"], required_unless_present = "moto_store")]
        store: Option<String>,
        /// With --store postgres: the store's connection string.
        #[arg(long, env = "BEMS_POSTGRES_URL", hide_env_values = true)]
        postgres_url: Option<String>,
        /// Read the store through moto's own API at this URL instead of Timestream (a cell on the local emulators, whose Timestream runs no query).
        #[arg(long, conflicts_with = "store")]
        moto_store: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the cell's CloudFormation template files (cell.json and one rules file per stage) to a directory.
    Template {
        #[command(flatten)]
        cell: CellArgs,
        /// Directory to write to (created if missing).
        #[arg(long, default_value = ".")]
        out: std::path::PathBuf,
        /// The BEMS workspace (where `sam build` finds bems-lambda), relative to --out.
        #[arg(long, default_value = "../../..")]
        code_uri: String,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Apply the committed migrations the cell's schema lacks (in one transaction, under an advisory lock), then make the writer and reader roles and grant them their privileges.
    Migrate {
        #[command(flatten)]
        store: PostgresArgs,
        /// Leave the roles alone (the connecting user lacks CREATEROLE, or an administrator manages roles).
        #[arg(long)]
        no_roles: bool,
        /// Set the Data API reader's password from the secret on standard input ({"username": "bems_api_reader", "password": ...}: the template's DatabaseReaderSecret as `aws secretsmanager get-secret-value --query SecretString --output text` prints it).
        #[arg(long, conflicts_with = "no_roles")]
        api_reader_secret_stdin: bool,
    },
    /// Create the monthly partitions from this month on, moving any of their rows out of the default partition.
    Partitions {
        #[command(flatten)]
        store: PostgresArgs,
        /// Months ahead to create.
        #[arg(long, default_value_t = 3)]
        ahead: u32,
    },
    /// Move the months older than --keep-months out of the store: each month's status changes and their versions exported (gzipped) to --to, checked there, recorded, then its partitions dropped.
    Archive {
        #[command(flatten)]
        store: PostgresArgs,
        /// Months kept in the store, the current one included (at least 1).
        #[arg(long, default_value_t = 3)]
        keep_months: u32,
        /// Where the files go: s3://bucket/prefix, or a directory.
        #[arg(long)]
        to: String,
        /// csv or jsonl.
        #[arg(long, value_parser = ["csv", "jsonl"], default_value = "csv")]
        format: String,
        /// gzip or none.
        #[arg(long, value_parser = ["gzip", "none"], default_value = "gzip")]
        compression: String,
        /// Size of each part of an S3 upload, MiB (at least 5; a file takes at most 10,000).
        #[arg(long, default_value_t = 32)]
        part_size_mib: usize,
        /// List the months that would be archived, and stop.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the store: rows waiting in the default partition, and the rollups against the rows (exit 4 on a problem).
    Check {
        #[command(flatten)]
        store: PostgresArgs,
        /// How far back to check the rollups, hours (the check reads every row of the window).
        #[arg(long, default_value_t = 2)]
        window_hours: u32,
    },
}

/// A cell's PostgreSQL store.
#[derive(Args)]
struct PostgresArgs {
    #[command(flatten)]
    cell: CellArgs,
    /// The store's connection string (or the Data API's --cluster-arn and --secret-arn).
    #[arg(long, env = "BEMS_POSTGRES_URL", hide_env_values = true)]
    postgres_url: Option<String>,
    #[command(flatten)]
    data_api: DataApiArgs,
}

/// Where a store command's statements run.
enum Session {
    /// A connection.
    Connection(Box<bems_store::postgres::Postgres>, bems_store::postgres::Client),
    /// The RDS Data API.
    DataApi(bems_store::postgres::data_api::DataApi),
}

impl PostgresArgs {
    /// The store and a connection to it (`store check` reads through one).
    async fn connect(&self) -> anyhow::Result<(bems_store::postgres::Postgres, bems_store::postgres::Client)> {
        let url = self.postgres_url.as_deref().context(
            "--postgres-url (or BEMS_POSTGRES_URL): this command reads through a connection, not the Data API",
        )?;
        let pg = bems_ops::store::postgres(url, &self.cell.spec()?)?;
        let client = pg.connect().await?;
        Ok((pg, client))
    }

    /// A connection when --postgres-url is given, else the Data API when
    /// --cluster-arn is.
    async fn session(&self) -> anyhow::Result<Session> {
        let target = if self.postgres_url.is_some() { None } else { self.data_api.target()? };
        match target {
            Some(target) => {
                let config = bems_ops::aws_config(Some(&self.cell.region)).await;
                Ok(Session::DataApi(bems_ops::store::data_api(&target, &self.cell.spec()?, &config)))
            }
            None => {
                let (pg, client) = self.connect().await?;
                Ok(Session::Connection(Box::new(pg), client))
            }
        }
    }
}

/// The RDS Data API's way to an Aurora cluster in a private network.
#[derive(Args)]
struct DataApiArgs {
    /// The Aurora cluster's ARN, to go through the RDS Data API (the stack's DatabaseClusterArn output).
    #[arg(long, env = "BEMS_DATA_API_CLUSTER")]
    cluster_arn: Option<String>,
    /// With --cluster-arn: the secret the Data API logs in with: DatabaseReaderSecretArn to read (history, stuck), DatabaseSecretArn (the master user's) for store migrate, partitions and archive.
    #[arg(long, env = "BEMS_DATA_API_SECRET")]
    secret_arn: Option<String>,
    /// With --cluster-arn: the database.
    #[arg(long, env = "BEMS_DATA_API_DATABASE", default_value = bems_core::contract::DATABASE_NAME)]
    database: String,
}

impl DataApiArgs {
    /// The target, if --cluster-arn is given.
    fn target(&self) -> anyhow::Result<Option<bems_ops::store::DataApiTarget>> {
        let Some(cluster_arn) = self.cluster_arn.clone() else { return Ok(None) };
        let secret_arn =
            self.secret_arn.clone().context("--cluster-arn needs --secret-arn (or BEMS_DATA_API_SECRET)")?;
        Ok(Some(bems_ops::store::DataApiTarget { cluster_arn, secret_arn, database: self.database.clone() }))
    }
}

/// Which store a command reads.
#[derive(Args)]
struct StoreArgs {
    /// The cell's store: postgres (with --postgres-url), data-api (PostgreSQL through the RDS Data API: --cluster-arn, --secret-arn) or timestream.
    #[arg(long = "store", value_parser = ["postgres", "data-api", "timestream"], default_value = "postgres", env = "BEMS_STORE")]
    kind: String,
    /// With --store postgres: the store's connection string.
    #[arg(long, env = "BEMS_POSTGRES_URL", hide_env_values = true)]
    postgres_url: Option<String>,
    #[command(flatten)]
    data_api: DataApiArgs,
}

impl StoreArgs {
    fn choice(&self) -> anyhow::Result<bems_ops::store::StoreChoice> {
        Ok(match self.kind.as_str() {
            "timestream" => bems_ops::store::StoreChoice::Timestream { endpoint: None },
            "data-api" => bems_ops::store::StoreChoice::DataApi(
                self.data_api.target()?.context("--store data-api needs --cluster-arn (or BEMS_DATA_API_CLUSTER)")?,
            ),
            _ => bems_ops::store::StoreChoice::Postgres {
                url: self
                    .postgres_url
                    .clone()
                    .context("--store postgres needs --postgres-url (or BEMS_POSTGRES_URL)")?,
            },
        })
    }
}

#[derive(Args)]
struct CellArgs {
    /// Cell id (lowercase letters, digits, inner hyphens; at most 20).
    #[arg(long, env = "BEMS_CELL")]
    cell: String,
    /// AWS Region of the cell.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    region: String,
    /// AWS account of the cell (LocalStack: 000000000000).
    #[arg(long, env = "BEMS_ACCOUNT", default_value = "000000000000")]
    account: String,
    /// Partitions, 1-99.
    #[arg(long, default_value_t = 16)]
    partitions: u32,
    /// Raised "rules per event bus" quota, if any.
    #[arg(long, default_value_t = 300)]
    rules_per_bus: u32,
}

impl CellArgs {
    fn spec(&self) -> anyhow::Result<CellSpec> {
        Ok(CellSpec::with_quotas(
            CellId::new(&self.cell).context("--cell")?,
            Region::new(&self.region).context("--region")?,
            AccountId::new(&self.account).context("--account")?,
            PartitionCount::new(self.partitions).context("--partitions")?,
            Quotas { rules_per_bus: self.rules_per_bus, ..Quotas::default() },
        )?)
    }
}

/// Exit code 3: the event given to `send` is invalid.
const INVALID: u8 = 3;
/// Exit code 4: `stuck` found stuck invoices.
const FOUND: u8 = 4;
/// Exit code 5: the `smoke` invoice stopped before the end.
const STOPPED: u8 = 5;

/// The smoke report, a line per step.
fn print_smoke(report: &bems_ops::smoke::Report) {
    println!("smoke: invoice {} (event {})", report.invoice_id, report.event_id);
    println!("  {:<15} HTTP {} in {} ms", "api", report.api.status, report.api.ms);
    if report.stopped.as_ref().is_some_and(|s| s.at == "api") {
        println!("  (nothing was accepted, so nothing is followed)");
    } else {
        #[allow(clippy::cast_precision_loss, reason = "milliseconds of one run")]
        let at = |ms: Option<u64>| ms.map_or_else(|| "-".to_owned(), |ms| format!("{:.1} s", ms as f64 / 1000.0));
        println!("  {:<15} {:<11} {:>10} {:>10}", "", "status", "in stage", "stored");
        for c in &report.checkpoints {
            let stored = if report.store_checked { at(c.stored_after_ms) } else { "no store".to_owned() };
            println!("  {:<15} {:<11} {:>10} {:>10}", c.name, c.status.as_str(), at(c.seen_after_ms), stored);
        }
    }
    match &report.stopped {
        None if report.store_checked => {
            println!("smoke: passed: every stage handled it and the store holds each status change");
        }
        None => println!("smoke: passed: every stage handled it (no store was checked)"),
        Some(stop) => {
            println!("smoke: STOPPED at {}: {}", stop.at, stop.reason);
            for q in &stop.queues {
                println!("  {}: {} waiting, {} in flight", q.queue, q.waiting, q.in_flight);
            }
            for d in &stop.dead_lettered {
                println!("  dead-lettered in {}: {}", d.place, d.reason);
            }
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bems: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Provision { cell, max_receive_count, visibility_timeout, json } => {
            let spec = cell.spec()?;
            let clients = Clients::new(&bems_ops::aws_config(Some(&cell.region)).await);
            let options = ProvisionOptions { max_receive_count, visibility_timeout_secs: visibility_timeout };
            let done = provision(&clients, &spec, &options).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&done)?);
            } else {
                println!("{}", done.report);
                println!(
                    "ingress: REST API {} (stage {}), producer API key {}",
                    done.ingress.rest_api_id,
                    bems_template::api::STAGE_NAME,
                    done.ingress.api_key
                );
            }
        }
        Command::Teardown { cell, yes } => {
            anyhow::ensure!(yes, "teardown deletes the cell's queues and their messages; pass --yes to confirm");
            let spec = cell.spec()?;
            let clients = Clients::new(&bems_ops::aws_config(Some(&cell.region)).await);
            println!("{}", bems_ops::provision::teardown(&clients, &spec).await?);
        }
        Command::Stuck { cell, sla, window_hours, dlq_only, store, alert_topic, state, json } => {
            let spec = cell.spec()?;
            let config = bems_ops::aws_config(Some(&cell.region)).await;
            let mut stuck = bems_ops::stuck::dead_lettered(&Clients::new(&config).sqs, &spec).await?;
            if !dlq_only {
                let store = bems_ops::store::open(&store.choice()?, &spec, &config).await?;
                stuck.extend(bems_ops::stuck::over_sla(&store, sla, window_hours).await?);
            }
            if let Some(path) = &state {
                let mut alerted: bems_ops::stuck::Alerted = match std::fs::read_to_string(path) {
                    Ok(text) => serde_json::from_str(&text).with_context(|| format!("--state {}", path.display()))?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
                    Err(e) => return Err(e).with_context(|| format!("--state {}", path.display())),
                };
                let fresh = alerted.new_since(&stuck);
                if let Some(topic) = &alert_topic {
                    let sent =
                        bems_ops::stuck::alert(&Clients::new(&config).sns, topic, spec.cell_id().as_str(), &fresh)
                            .await?;
                    eprintln!("bems: {sent} new alert(s) sent to {topic}");
                }
                std::fs::write(path, serde_json::to_string_pretty(&alerted)?)
                    .with_context(|| format!("--state {}", path.display()))?;
            }
            if json {
                print_json(&stuck)?;
            } else if stuck.is_empty() {
                println!("nothing is stuck in cell {}", spec.cell_id());
            } else {
                for s in &stuck {
                    println!(
                        "{:<24} {:<14} {:>7}s  {}: {}{}",
                        s.invoice_id.as_deref().unwrap_or("(undecodable)"),
                        serde_json::to_value(s.kind)?.as_str().unwrap_or_default(),
                        s.age_secs,
                        s.place,
                        s.reason,
                        if s.more_in_group { " (more may wait behind it in its FIFO group)" } else { "" }
                    );
                }
            }
            return Ok(if stuck.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(FOUND) });
        }
        Command::Redrive { cell, queue, invoice, json } => {
            let spec = cell.spec()?;
            let (dlq, source) = bems_ops::redrive::queues_named(&spec, &queue).context("--queue")?;
            let sqs = Clients::new(&bems_ops::aws_config(Some(&cell.region)).await).sqs;
            let dlq_url = bems_ops::redrive::queue_url(&sqs, &dlq).await?;
            let source_url = bems_ops::redrive::queue_url(&sqs, &source).await?;
            match invoice {
                None => {
                    let moved = bems_ops::redrive::redrive_fifo(&sqs, &dlq_url, &source_url).await?;
                    if json {
                        print_json(&moved)?;
                    } else {
                        println!("moved {} message(s) from {dlq} to {source}", moved.message_ids.len());
                    }
                }
                Some(invoice) => {
                    let invoice = bems_core::fields::InvoiceId::new(&invoice).context("--invoice")?;
                    let moved =
                        bems_ops::redrive::redrive_invoice(&sqs, &dlq_url, &source_url, invoice.as_str()).await?;
                    if json {
                        print_json(&moved)?;
                    } else {
                        println!(
                            "moved {} message(s) of {invoice} from {dlq} to {source}; left {} of other invoices",
                            moved.message_ids.len(),
                            moved.left
                        );
                        if !moved.unreached_groups.is_empty() {
                            println!(
                                "not reached: messages behind another invoice's in group(s) {}",
                                moved.unreached_groups.join(", ")
                            );
                        }
                    }
                }
            }
        }
        Command::Replay { cell, from, to, wait, json } => {
            let spec = cell.spec()?;
            let config = bems_ops::aws_config(Some(&cell.region)).await;
            let endpoint = config.endpoint_url().map(str::to_owned);
            let emulator = match endpoint.clone() {
                Some(url) => tokio::task::spawn_blocking(move || bems_ops::is_localstack(&url).then_some(url)).await?,
                None => None,
            };
            let events = Clients::new(&config).events;
            let replay =
                bems_ops::replay::replay(&events, &spec, from, to, emulator.as_deref(), wait.map(Duration::from_secs))
                    .await?;
            if json {
                print_json(&replay)?;
            } else {
                println!("replay {} ({}): {}", replay.name, replay.arn, replay.state);
            }
        }
        Command::History { cell, store, invoice, versions, json } => {
            use bems_store::query::Queries;
            let spec = cell.spec()?;
            let invoice = bems_core::fields::InvoiceId::new(&invoice).context("INVOICE")?;
            let config = bems_ops::aws_config(Some(&cell.region)).await;
            let store = bems_ops::store::open(&store.choice()?, &spec, &config).await?;
            let entries = if versions {
                store.versions(invoice.as_str()).await?
            } else {
                store.history(invoice.as_str()).await?
            };
            let archived = store.archived(invoice.as_str()).await?;
            if json {
                print_json(&serde_json::json!({ "entries": entries, "archived": archived }))?;
            } else if entries.is_empty() && archived.is_empty() {
                println!("no history for {invoice} in cell {} ({})", spec.cell_id(), store.describe());
            } else {
                for e in &entries {
                    let version = match (versions, e.version) {
                        (true, Some(v)) => format!("  version {}", v.to_rfc3339()),
                        _ => String::new(),
                    };
                    println!(
                        "{}  {:<15} {:<11} <- {:<11} {} {}  {}{version}{}",
                        e.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                        e.stage,
                        e.status,
                        e.previous_status.map_or("-", |s| s.as_str()),
                        e.amount.map_or_else(|| "-".to_owned(), |a| a.to_string()),
                        e.currency.as_deref().unwrap_or(""),
                        e.event_id,
                        e.reason.as_deref().map(|r| format!("  ({r})")).unwrap_or_default()
                    );
                }
                for a in &archived {
                    let file =
                        if versions { a.versions.as_deref().unwrap_or("(no versions file)") } else { &a.changes };
                    println!("{}: archived at {file}", a.month.format("%Y-%m"));
                }
            }
        }
        Command::Store { command } => match command {
            StoreCommand::Migrate { store, no_roles, api_reader_secret_stdin } => {
                let password = if api_reader_secret_stdin {
                    let mut text = String::new();
                    std::io::stdin()
                        .read_to_string(&mut text)
                        .context("read the reader's secret from standard input")?;
                    Some(api_reader_password(&text)?)
                } else {
                    None
                };
                let roles = if no_roles { Roles::Leave } else { Roles::Grant { password } };
                match store.session().await? {
                    Session::Connection(pg, mut client) => {
                        migrate(&mut client, pg.schema(), &pg.describe(), roles).await?;
                    }
                    Session::DataApi(mut api) => {
                        let (schema, place) = (bems_store::postgres::SqlStore::schema(&api).clone(), api.describe());
                        migrate(&mut api, &schema, &place, roles).await?;
                    }
                }
            }
            StoreCommand::Partitions { store, ahead } => {
                let done = match store.session().await? {
                    Session::Connection(pg, mut client) => {
                        bems_store::postgres::partitions::ensure(&mut client, pg.schema(), chrono::Utc::now(), ahead)
                            .await?
                    }
                    Session::DataApi(mut api) => {
                        let schema = bems_store::postgres::SqlStore::schema(&api).clone();
                        bems_store::postgres::partitions::ensure(&mut api, &schema, chrono::Utc::now(), ahead).await?
                    }
                };
                println!(
                    "schema {}: created {:?}; {} already there; {} row(s) moved out of the default partition",
                    bems_store::postgres::Schema::of_cell(store.cell.spec()?.cell_id()),
                    done.created,
                    done.existing.len(),
                    done.moved
                );
            }
            StoreCommand::Archive { store, keep_months, to, format, compression, part_size_mib, dry_run, json } => {
                let format = if format == "jsonl" {
                    bems_store::postgres::export::Format::Jsonl
                } else {
                    bems_store::postgres::export::Format::Csv
                };
                let compression = if compression == "none" {
                    bems_store::postgres::export::Compression::None
                } else {
                    bems_store::postgres::export::Compression::Gzip
                };
                let encoding = bems_store::postgres::export::Encoding { format, compression };
                let job = ArchiveJob { keep_months, encoding, dry_run, json };
                let config = bems_ops::aws_config(Some(&store.cell.region)).await;
                let target = if to.starts_with("s3://") {
                    Target::S3(
                        bems_ops::archive::S3Target::from_config(&config, &to)?.with_part_size(part_size_mib << 20),
                    )
                } else {
                    Target::Directory(bems_store::postgres::archive::Directory::new(&to))
                };
                match store.session().await? {
                    Session::Connection(pg, mut client) => {
                        job.run(&mut client, pg.schema(), &target).await?;
                    }
                    Session::DataApi(mut api) => {
                        let schema = bems_store::postgres::SqlStore::schema(&api).clone();
                        job.run(&mut api, &schema, &target).await?;
                    }
                }
            }
            StoreCommand::Check { store, window_hours } => {
                let (pg, client) = store.connect().await?;
                let (stranded, oldest, newest) =
                    bems_store::postgres::partitions::in_default(&client, pg.schema()).await?;
                let now = chrono::Utc::now();
                let mismatches = bems_store::postgres::check::rollup_mismatches(
                    &client,
                    pg.schema(),
                    now - chrono::Duration::hours(i64::from(window_hours)),
                    now + chrono::Duration::minutes(1),
                )
                .await?;
                if stranded > 0 {
                    println!(
                        "{stranded} row(s) in the default partition ({} to {}): run `bems store partitions`",
                        oldest.map(|t| t.to_rfc3339()).unwrap_or_default(),
                        newest.map(|t| t.to_rfc3339()).unwrap_or_default()
                    );
                }
                for m in &mismatches {
                    println!("{} {}: rows say {}, the rollup {}", m.rollup, m.what, m.rows, m.stored);
                }
                if stranded > 0 || !mismatches.is_empty() {
                    return Ok(ExitCode::from(FOUND));
                }
                println!(
                    "schema {}: no row in the default partition; the rollups of the last {window_hours} h equal the rows",
                    pg.schema()
                );
            }
        },
        Command::Export { cell, postgres_url, from, to, format, out } => {
            let spec = cell.spec()?;
            let pg = bems_ops::store::postgres(&postgres_url, &spec)?;
            let mut client = pg.connect().await?;
            let format = if format == "jsonl" {
                bems_store::postgres::export::Format::Jsonl
            } else {
                bems_store::postgres::export::Format::Csv
            };
            let file = std::fs::File::create(&out).with_context(|| format!("create {}", out.display()))?;
            let manifest = bems_store::postgres::export::export(
                &mut client,
                pg.schema(),
                from,
                to,
                format,
                std::io::BufWriter::new(file),
            )
            .await?;
            let mut manifest_path = out.clone().into_os_string();
            manifest_path.push(".manifest.json");
            std::fs::write(&manifest_path, serde_json::to_string_pretty(&manifest)?)
                .with_context(|| format!("write {}", manifest_path.to_string_lossy()))?;
            println!(
                "{} row(s) of {} to {} in {} (sha256 {}); manifest {}",
                manifest.rows,
                from.to_rfc3339(),
                to.to_rfc3339(),
                out.display(),
                manifest.sha256,
                manifest_path.to_string_lossy()
            );
        }
        Command::Send { cell, file, json } => {
            let spec = cell.spec()?;
            let mut text = String::new();
            if file == "-" {
                std::io::stdin().read_to_string(&mut text).context("read standard input")?;
            } else {
                text = std::fs::read_to_string(&file).with_context(|| format!("read {file}"))?;
            }
            let target = bems_core::publish::CellTarget::from(&spec);
            let events = Clients::new(&bems_ops::aws_config(Some(&cell.region)).await).events;
            match bems_ops::send::send(events, target, &text).await {
                Ok(sent) if json => print_json(&sent)?,
                Ok(sent) => println!(
                    "sent {} of {} to partition {} (EventBridge id {})",
                    sent.event_id, sent.invoice_id, sent.partition, sent.eventbridge_id
                ),
                Err(bems_ops::send::SendError::Invalid(problems)) => {
                    if json {
                        print_json(&serde_json::json!({ "invalid": problems }))?;
                    }
                    eprintln!("bems: the event is invalid; nothing was sent:");
                    for p in &problems {
                        eprintln!("  {p}");
                    }
                    return Ok(ExitCode::from(INVALID));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Command::Smoke { cell, api_url, api_key, timeout, store, postgres_url, moto_store, json } => {
            let spec = cell.spec()?;
            let config = bems_ops::aws_config(Some(&cell.region)).await;
            // Only what was not given is looked up.
            let clients = Clients::new(&config);
            let apigateway = &clients.apigateway;
            let url = match api_url {
                Some(url) => format!("{}/invoices/ingestion", url.trim_end_matches('/')),
                None => {
                    let ingress = bems_ops::ingress::Ingress {
                        rest_api_id: bems_ops::ingress::find_api(apigateway, &spec).await?,
                        api_key: String::new(),
                    };
                    match config.endpoint_url() {
                        Some(endpoint) => ingress.localstack_url(endpoint, Stage::Ingestion),
                        None => ingress.aws_url(&cell.region, Stage::Ingestion),
                    }
                }
            };
            let key = match api_key {
                Some(key) => key,
                None => bems_ops::ingress::find_key(apigateway, &spec).await?,
            };
            let sqs = clients.sqs.clone();
            let options = bems_ops::smoke::Options { timeout: Duration::from_secs(timeout), ..Default::default() };
            if !json {
                println!("smoke: one invoice into cell {} through {url}", spec.cell_id());
            }
            let report = match (moto_store, store.as_deref()) {
                (Some(moto), _) => {
                    let store = bems_ops::smoke::MotoStore { url: moto, spec: spec.clone() };
                    bems_ops::smoke::smoke(&spec, &url, &key, &store, &sqs, options).await?
                }
                (None, Some("none")) => {
                    bems_ops::smoke::smoke(&spec, &url, &key, &bems_ops::smoke::NoStore, &sqs, options).await?
                }
                (None, kind) => {
                    let choice = match kind {
                        Some("postgres") => bems_ops::store::StoreChoice::Postgres {
                            url: postgres_url
                                .context("--store postgres needs --postgres-url (or BEMS_POSTGRES_URL)")?,
                        },
                        _ => bems_ops::store::StoreChoice::Timestream { endpoint: None },
                    };
                    let store = bems_ops::store::open(&choice, &spec, &config).await?;
                    bems_ops::smoke::smoke(&spec, &url, &key, &store, &sqs, options).await?
                }
            };
            if json {
                print_json(&report)?;
            } else {
                print_smoke(&report);
            }
            if !report.passed() {
                return Ok(ExitCode::from(STOPPED));
            }
        }
        Command::Template { cell, out, code_uri } => {
            let spec = cell.spec()?;
            let defaults = bems_template::TemplateDefaults { code_uri, ..Default::default() };
            let template = bems_template::cell_template(&spec, &defaults);
            std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
            for (name, text) in template.texts() {
                let path = out.join(name);
                std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
                println!("{}", path.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Applies the migrations to `schema` on `session` (a connection or the
/// Data API), then, unless `no_roles`, makes the writer and reader roles.
/// What `store migrate` does with the roles.
enum Roles {
    /// Nothing (`--no-roles`).
    Leave,
    /// Make them and grant their privileges; set the Data API reader's
    /// password when given.
    Grant { password: Option<String> },
}

/// The password of the Data API reader's secret `text` (its JSON), whose
/// username must be the Data API reader.
fn api_reader_password(text: &str) -> anyhow::Result<String> {
    let reader = bems_core::contract::DB_API_READER;
    let secret: serde_json::Value = serde_json::from_str(text.trim()).context(
        "--api-reader-secret-stdin: standard input is not the secret's JSON ({\"username\": ..., \"password\": ...})",
    )?;
    match secret.get("username").and_then(serde_json::Value::as_str) {
        Some(name) if name == reader => {}
        Some(name) => {
            anyhow::bail!("--api-reader-secret-stdin: username is {name:?}; the Data API reader is {reader:?}")
        }
        None => anyhow::bail!("--api-reader-secret-stdin: the secret has no \"username\" (expected {reader:?})"),
    }
    match secret.get("password").and_then(serde_json::Value::as_str) {
        Some(password) if password.len() >= 16 => Ok(password.to_owned()),
        Some(_) => anyhow::bail!("--api-reader-secret-stdin: \"password\" is shorter than 16 characters"),
        None => anyhow::bail!("--api-reader-secret-stdin: the secret has no \"password\""),
    }
}

async fn migrate(
    session: &mut impl bems_store::postgres::sql::Transactional,
    schema: &bems_store::postgres::Schema,
    place: &str,
    roles: Roles,
) -> anyhow::Result<()> {
    let done = bems_store::postgres::migrate::migrate(session, schema).await?;
    println!("schema {schema} on {place}: applied {:?}, already there {:?}", done.applied, done.already);
    if let Roles::Grant { password } = roles {
        bems_store::postgres::roles::grant(session, schema).await?;
        println!(
            "roles: {} (insert and update the status tables), {} and {} (select only)",
            bems_core::contract::DB_WRITER,
            bems_core::contract::DB_READER,
            bems_core::contract::DB_API_READER
        );
        if let Some(password) = password {
            bems_store::postgres::roles::set_password(session, &password).await?;
            println!("{}: password set from the secret", bems_core::contract::DB_API_READER);
        }
    }
    Ok(())
}

/// Where `bems store archive` writes.
enum Target {
    S3(bems_ops::archive::S3Target),
    Directory(bems_store::postgres::archive::Directory),
}

/// `bems store archive`'s choices.
struct ArchiveJob {
    keep_months: u32,
    encoding: bems_store::postgres::export::Encoding,
    dry_run: bool,
    json: bool,
}

impl ArchiveJob {
    async fn run(
        &self,
        session: &mut impl bems_store::postgres::sql::Transactional,
        schema: &bems_store::postgres::Schema,
        target: &Target,
    ) -> anyhow::Result<()> {
        match target {
            Target::S3(t) => self.run_to(session, schema, t).await,
            Target::Directory(t) => self.run_to(session, schema, t).await,
        }
    }

    async fn run_to(
        &self,
        session: &mut impl bems_store::postgres::sql::Transactional,
        schema: &bems_store::postgres::Schema,
        target: &impl bems_store::postgres::archive::Target,
    ) -> anyhow::Result<()> {
        use bems_store::postgres::archive;
        let months = archive::months(session, schema, self.keep_months, chrono::Utc::now()).await?;
        if self.dry_run {
            if self.json {
                print_json(&months)?;
            } else {
                let names: Vec<String> = months.iter().map(|m| m.format("%Y-%m").to_string()).collect();
                println!("schema {schema}: would archive {names:?} (keeping {} month(s))", self.keep_months);
            }
            return Ok(());
        }
        let mut done = Vec::new();
        for month in months {
            let archived = archive::archive_month(session, schema, month, target, self.encoding)
                .await
                .with_context(|| format!("archive {}", month.format("%Y-%m")))?;
            if !self.json {
                for f in &archived.files {
                    println!(
                        "{} {}: {} row(s) to {} ({} bytes, sha256 {})",
                        month.format("%Y-%m"),
                        f.table,
                        f.rows,
                        f.location,
                        f.bytes,
                        f.sha256
                    );
                }
                println!("{}: partitions dropped", month.format("%Y-%m"));
            }
            done.push(archived);
        }
        if self.json {
            print_json(&done)?;
        } else if done.is_empty() {
            println!("schema {schema}: nothing older than {} month(s) to archive", self.keep_months);
        }
        Ok(())
    }
}
