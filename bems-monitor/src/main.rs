//! `cargo run -p bems-monitor`: the whole system on this machine.
//!
//! Starts the emulators if they are not up (`scripts/emulators up`) and a
//! PostgreSQL server for the cell's store (`scripts/postgres up`, unless
//! `--postgres-url` names one), provisions a cell on LocalStack, migrates
//! its store's schema and makes its partitions, runs the six functions
//! with the local event-source runner (the route forwarder, the four stage
//! processors, the PostgreSQL status writer), drives month-end invoice
//! traffic into it, prints progress, and serves the dashboard on
//! <http://127.0.0.1:8080/>, whose store panels are the store's answers
//! through the query layer. Ctrl-C (or `--duration`) stops the traffic
//! and the functions, prints a summary, deletes the cell and its schema,
//! and stops what it started. `--store timestream` stores into moto's
//! Timestream instead.
//!
//! `--aws --region R --account A --cell C` points the same dashboard at a
//! cell deployed on AWS instead (see `aws.rs`): nothing is provisioned,
//! run or deleted; the panels come from the cell's store and CloudWatch
//! metrics, queues and dead letters from SQS, and traffic is sent only
//! with `--send-traffic`.

mod aws;
mod panels;
mod state;
mod traffic;
mod web;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bems_batch::BatchProcessor;
use bems_batch::function::ProcessorFunction;
use bems_core::Stage;
use bems_core::fields::{AccountId, CellId, Region};
use bems_core::partition::PartitionCount;
use bems_core::publish::{CellTarget, Outcome, Publisher};
use bems_core::retry::RetryPolicy;
use bems_core::routing::CellSpec;
use bems_lambda::postgres::PostgresSink;
use bems_lambda::processor::StageProcessor;
use bems_lambda::sqs::{EventSource, RunnerOptions, SqsDeadLetter};
use bems_lambda::stages::Rules;
use bems_lambda::stages::{NoApprovals, NoPurchaseOrderSystem};
use bems_lambda::timestream::TimestreamTable;
use bems_lambda::writer::StatusWriter;
use bems_ops::provision::{Clients, ProvisionOptions, provision};
use bems_store::postgres::Postgres;
use clap::Parser;
use tokio::sync::watch;

use crate::state::{ClassCounts, State, Tee};
use crate::traffic::{Generator, Made, Profile};

#[derive(Parser, Debug)]
#[command(
    name = "bems-monitor",
    about = "Run a BEMS cell on the local emulators with month-end traffic and a live dashboard."
)]
struct Args {
    /// Cell id.
    #[arg(long, default_value = "local")]
    cell: String,
    /// Partitions (FIFO message groups per stage).
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// The month-end peak, status events per minute, before scaling.
    #[arg(long, default_value_t = 60_000.0)]
    peak: f64,
    /// The steady rate before the surge, as a share of the peak.
    #[arg(long, default_value_t = 0.2)]
    base_share: f64,
    /// Scale applied to the rates: what this machine's emulators sustain (about 100 status events/s on two cores).
    #[arg(long, default_value_t = 0.05)]
    scale: f64,
    /// Seconds the climb from the steady rate to the peak takes.
    #[arg(long, default_value_t = 120)]
    ramp_secs: u64,
    /// Share of invoices above the automatic approval limit (they end in the authorization DLQ).
    #[arg(long, default_value_t = 0.005)]
    failing: f64,
    /// Share of invalid payloads (refused by validation, never sent).
    #[arg(long, default_value_t = 0.01)]
    invalid: f64,
    /// The SLA, seconds: a non-terminal status older than this is stuck.
    #[arg(long, default_value_t = 120)]
    sla: u64,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    duration: Option<u64>,
    /// Dashboard port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// LocalStack's endpoint.
    #[arg(long, env = "BEMS_LOCALSTACK_URL", default_value = "http://127.0.0.1:4566")]
    localstack: String,
    /// moto's endpoint (Timestream, with `--store timestream`).
    #[arg(long, env = "BEMS_MOTO_URL", default_value = "http://127.0.0.1:4599")]
    moto: String,
    /// The cell's store: postgres (locally: a server of `scripts/postgres`,
    /// started if needed), data-api (with `--aws`: the Aurora cluster
    /// through the RDS Data API, `--cluster-arn` and `--secret-arn`) or
    /// timestream (locally: moto's).
    #[arg(long, value_parser = ["postgres", "data-api", "timestream"], default_value = "postgres")]
    store: String,
    /// With `--aws --store data-api`: the Aurora cluster's ARN (the stack's
    /// DatabaseClusterArn output).
    #[arg(long, env = "BEMS_DATA_API_CLUSTER")]
    cluster_arn: Option<String>,
    /// With `--aws --store data-api`: the secret the Data API logs in with:
    /// the stack's DatabaseReaderSecretArn (`bems_api_reader`, SELECT only;
    /// the IAM-only reader cannot log in through the Data API).
    #[arg(long, env = "BEMS_DATA_API_SECRET")]
    secret_arn: Option<String>,
    /// The PostgreSQL server of the store (default locally: the one
    /// `scripts/postgres` runs, started if needed; required with `--aws
    /// --store postgres`).
    #[arg(long, env = "BEMS_POSTGRES_URL", hide_env_values = true)]
    postgres_url: Option<String>,
    /// Keep the cell when stopping.
    #[arg(long)]
    keep: bool,
    /// Run the cell without this stage's processor (repeatable): its queue
    /// fills, its alarms' conditions show on the dashboard, and `bems
    /// smoke` reports that the invoices stop there.
    #[arg(long, value_parser = parse_stage)]
    without_processor: Vec<Stage>,
    /// On the emulators: after the traffic stops, seconds to let the cell
    /// finish what is in flight (until every published event is visible)
    /// before the summary.
    #[arg(long, default_value_t = 60)]
    drain_secs: u64,
    /// Point at a cell deployed on AWS (the standard credential chain)
    /// instead of the emulators: nothing is provisioned, run or deleted.
    #[arg(long, requires_all = ["region", "account"])]
    aws: bool,
    /// With `--aws`: the cell's Region.
    #[arg(long)]
    region: Option<String>,
    /// With `--aws`: the cell's account id.
    #[arg(long)]
    account: Option<String>,
    /// With `--aws`: also send the synthetic traffic to the cell's bus
    /// (off by default: it is a real cell).
    #[arg(long, requires = "aws")]
    send_traffic: bool,
    /// With `--aws`: an SNS topic to alert on (once per stuck invoice);
    /// without it the dashboard shows stuck invoices without alerting.
    #[arg(long, requires = "aws")]
    alert_topic: Option<String>,
    /// With `--aws`: minutes of history the panels cover.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=1440))]
    window_mins: u32,
    /// With `--aws`: seconds between polls of Timestream and CloudWatch.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    poll_secs: u64,
    /// With `--aws`: a Timestream query endpoint to use instead of endpoint
    /// discovery (the tests point it at moto).
    #[arg(long, env = "BEMS_TIMESTREAM_QUERY_URL")]
    timestream_endpoint: Option<String>,
    /// With `--aws --store timestream`: print the Timestream queries
    /// behind the panels, as JSON, and exit.
    #[arg(long, requires = "aws")]
    print_queries: bool,
}

fn parse_stage(name: &str) -> Result<Stage, String> {
    Stage::from_wire(name)
        .ok_or_else(|| format!("'{name}' is not a stage (ingestion, reconciliation, authorization, posting)"))
}

async fn config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new("test", "test", None, None, "bems-monitor"))
        .load()
        .await
}

fn emulators_script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/emulators")
}

fn postgres_script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres")
}

/// The local cell's PostgreSQL: `--postgres-url`'s, else the server
/// `scripts/postgres` runs, started if it does not answer. The URL, and
/// whether this run started the server (and so stops it).
async fn ensure_postgres(args: &Args) -> anyhow::Result<(String, bool)> {
    if let Some(url) = &args.postgres_url {
        return Ok((url.clone(), false));
    }
    let script = postgres_script();
    let env = std::process::Command::new(&script).arg("env").output().context("run scripts/postgres env")?;
    let url = String::from_utf8_lossy(&env.stdout)
        .trim()
        .strip_prefix("BEMS_POSTGRES_URL=")
        // Quoted for the shell (a TLS server's URL holds `&`).
        .map(|v| v.trim_matches('\'').to_owned())
        .context("scripts/postgres env printed no BEMS_POSTGRES_URL")?;
    let answers = std::process::Command::new(&script).arg("status").output().is_ok_and(|o| o.status.success());
    if answers {
        return Ok((url, false));
    }
    println!("bems-monitor: starting PostgreSQL ({} up)...", script.display());
    // Its own process group: Ctrl-C must not stop it before the cell's
    // schema is dropped.
    let status = std::process::Command::new(&script).arg("up").process_group(0).status().context("scripts/postgres")?;
    anyhow::ensure!(status.success(), "scripts/postgres up failed ({status})");
    Ok((url, true))
}

/// Starts the emulators with `scripts/emulators up` unless LocalStack
/// answers; whether it started them (and so stops them at the end).
fn ensure_emulators(localstack: &str) -> anyhow::Result<bool> {
    if bems_ops::is_localstack(localstack) {
        return Ok(false);
    }
    let script = emulators_script();
    println!("bems-monitor: starting the emulators ({} up)...", script.display());
    // In a process group of their own: Ctrl-C in the terminal signals the
    // whole foreground group, and the emulators must outlive it until the
    // cell is deleted (then `emulators down` stops them).
    let status =
        std::process::Command::new(&script).arg("up").process_group(0).status().context("run scripts/emulators")?;
    anyhow::ensure!(status.success(), "scripts/emulators up failed ({status})");
    anyhow::ensure!(bems_ops::is_localstack(localstack), "LocalStack does not answer at {localstack}");
    Ok(true)
}

/// The cell's Timestream database and table on moto.
async fn timestream(moto: &str, spec: &CellSpec) -> anyhow::Result<TimestreamTable> {
    let client = aws_sdk_timestreamwrite::Client::new(&config(moto).await);
    let database = spec.timestream_database();
    let table = bems_core::contract::TIMESTREAM_TABLE.to_owned();
    if let Err(e) = client.create_database().database_name(&database).send().await {
        anyhow::ensure!(format!("{e:?}").contains("Conflict"), "create the Timestream database on moto: {e:?}");
    }
    if let Err(e) = client.create_table().database_name(&database).table_name(&table).send().await {
        anyhow::ensure!(format!("{e:?}").contains("Conflict"), "create the Timestream table on moto: {e:?}");
    }
    Ok(TimestreamTable { client, database, table })
}

/// The cell this run shows, and what this process does for it.
struct Target {
    spec: CellSpec,
    clients: Clients,
    /// On the emulators: what this process started and runs.
    local: Option<LocalCell>,
    /// On AWS: the Timestream and CloudWatch pollers.
    remote: Option<aws::Remote>,
    /// Where stuck invoices are alerted, if anywhere.
    alert_topic: Option<String>,
}

/// Where the local cell's writer stores.
enum LocalStore {
    /// PostgreSQL: the cell's schema, and whether this run started the server.
    Postgres { pg: Box<Postgres>, started: bool },
    /// moto's Timestream.
    Timestream(TimestreamTable),
}

/// What the emulator mode provisions and starts.
struct LocalCell {
    started_emulators: bool,
    store: LocalStore,
    options: ProvisionOptions,
    /// The stages whose processor is not run (`--without-processor`).
    without_processor: Vec<Stage>,
}

/// Starts the emulators if needed and provisions the cell on them.
async fn local_target(args: &Args) -> anyhow::Result<Target> {
    anyhow::ensure!(
        args.store != "data-api",
        "--store data-api reads a deployed cell's Aurora cluster: use it with --aws"
    );
    let started_emulators = ensure_emulators(&args.localstack)?;
    let spec = CellSpec::new(
        CellId::new(&args.cell).context("--cell")?,
        Region::new("us-east-1")?,
        AccountId::new("000000000000")?,
        PartitionCount::new(args.partitions).context("--partitions")?,
    )?;
    let clients = Clients::new(&config(&args.localstack).await);
    // Short visibility and few receives: a failing invoice reaches its DLQ
    // in seconds, where the dashboard and `bems stuck` show it.
    let options = ProvisionOptions { visibility_timeout_secs: 5, max_receive_count: 3 };
    let provisioned = provision(&clients, &spec, &options).await.context("provision the cell")?;
    let store = if args.store == "timestream" {
        LocalStore::Timestream(timestream(&args.moto, &spec).await?)
    } else {
        let (url, started) = ensure_postgres(args).await?;
        let pg = bems_ops::store::postgres(&url, &spec)?;
        let mut admin = pg.connect().await.with_context(|| format!("connect to {}", pg.describe()))?;
        bems_store::postgres::migrate::migrate(&mut admin, pg.schema()).await?;
        bems_store::postgres::partitions::ensure(&mut admin, pg.schema(), chrono::Utc::now(), 1).await?;
        LocalStore::Postgres { pg: Box::new(pg), started }
    };
    let alerts = clients.sns.create_topic().name(spec.alerts_topic_name("critical")).send().await?;
    println!(
        "bems-monitor: cell {} ({} partitions) on {}; API {} (key {})",
        args.cell, args.partitions, args.localstack, provisioned.ingress.rest_api_id, provisioned.ingress.api_key
    );
    let smoke_store = match &store {
        LocalStore::Postgres { .. } => "--store postgres".to_owned(),
        LocalStore::Timestream(_) => format!("--moto-store {}", args.moto),
    };
    if let LocalStore::Postgres { pg, .. } = &store {
        println!("bems-monitor: the cell's store: {} (schema {})", pg.describe(), pg.schema());
        println!("bems-monitor: open it: {}", pg.psql_command());
    }
    println!(
        "bems-monitor: follow one invoice through it: AWS_ENDPOINT_URL={} AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test cargo run -q -p bems-cli -- smoke --cell {} --partitions {} {smoke_store}",
        args.localstack, args.cell, args.partitions
    );
    for stage in &args.without_processor {
        println!("bems-monitor: running without the {stage} processor (--without-processor)");
    }
    Ok(Target {
        spec,
        clients,
        local: Some(LocalCell { started_emulators, store, options, without_processor: args.without_processor.clone() }),
        remote: None,
        alert_topic: alerts.topic_arn().map(str::to_owned),
    })
}

/// The cell's spec on AWS, from the arguments.
fn aws_spec(args: &Args) -> anyhow::Result<CellSpec> {
    Ok(CellSpec::new(
        CellId::new(&args.cell).context("--cell")?,
        Region::new(args.region.as_deref().unwrap_or_default()).context("--region")?,
        AccountId::new(args.account.as_deref().unwrap_or_default()).context("--account")?,
        PartitionCount::new(args.partitions).context("--partitions")?,
    )?)
}

/// Connects to a cell deployed on AWS, checking that it is there.
async fn aws_target(args: &Args) -> anyhow::Result<Target> {
    let spec = aws_spec(args)?;
    let shared = bems_ops::aws_config(args.region.as_deref()).await;
    let clients = Clients::new(&shared);
    let status_queue = spec.status_queue_name();
    bems_lambda::sqs::queue_url(&clients.sqs, &status_queue).await.with_context(|| {
        format!("no cell {} in {}: its queue {status_queue} is not there", spec.cell_id(), spec.region())
    })?;
    let choice = match args.store.as_str() {
        "timestream" => bems_ops::store::StoreChoice::Timestream { endpoint: args.timestream_endpoint.clone() },
        "data-api" => bems_ops::store::StoreChoice::DataApi(bems_ops::store::DataApiTarget {
            cluster_arn: args.cluster_arn.clone().context("--aws --store data-api needs --cluster-arn")?,
            secret_arn: args.secret_arn.clone().context("--aws --store data-api needs --secret-arn")?,
            database: bems_core::contract::DATABASE_NAME.to_owned(),
        }),
        _ => bems_ops::store::StoreChoice::Postgres {
            url: args
                .postgres_url
                .clone()
                .context("--aws --store postgres needs --postgres-url (or BEMS_POSTGRES_URL)")?,
        },
    };
    let store = bems_ops::store::open(&choice, &spec, &shared).await?;
    let remote = aws::Remote {
        store,
        cloudwatch: aws_sdk_cloudwatch::Client::new(&shared),
        spec: spec.clone(),
        window_mins: args.window_mins,
    };
    println!(
        "bems-monitor: cell {} on AWS ({}, account {}); panels from {} and CloudWatch every {} s over the last {} min{}",
        spec.cell_id(),
        spec.region(),
        spec.account_id(),
        remote.store.describe(),
        args.poll_secs,
        args.window_mins,
        if args.send_traffic { "; sending synthetic traffic" } else { "" }
    );
    Ok(Target { spec, clients, local: None, remote: Some(remote), alert_topic: args.alert_topic.clone() })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.print_queries {
        let sla = u32::try_from(args.sla).unwrap_or(u32::MAX);
        let queries: serde_json::Map<String, serde_json::Value> =
            aws::timestream_queries(&aws_spec(&args)?, args.window_mins, sla)
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.into()))
                .collect();
        println!("{}", serde_json::Value::Object(queries));
        return Ok(());
    }
    let failures = Arc::new(ClassCounts::default());
    metrics::set_global_recorder(state::Recorder(failures.clone())).map_err(|e| anyhow::anyhow!("metrics: {e}"))?;
    let mut target = if args.aws { aws_target(&args).await? } else { local_target(&args).await? };
    let spec = target.spec.clone();
    let clients = target.clients.clone();

    let state = Arc::new(Mutex::new(match (&target.remote, target.local.as_ref().map(|l| &l.store)) {
        (Some(remote), _) => State::aws(&args.cell, args.sla, &remote.store.describe()),
        (None, Some(LocalStore::Timestream(_))) => State::local_teed(&args.cell, args.sla, failures),
        (None, Some(LocalStore::Postgres { pg, .. })) => {
            State::local(&args.cell, args.sla, failures, &format!("postgres {} schema {}", pg.describe(), pg.schema()))
        }
        (None, None) => anyhow::bail!("no cell to show"),
    }));
    let (stop, stopped) = watch::channel(false);
    // The traffic stops first; the functions after the drain.
    let (stop_traffic, traffic_stopped) = watch::channel(false);
    let cell_target = CellTarget::from(&spec);

    let mut tasks = Vec::new();
    if let Some(local) = target.local.as_ref() {
        start_functions(&clients, &spec, local, &cell_target, &state, &stopped, &mut tasks).await?;
    }
    if target.local.is_some() || args.send_traffic {
        let bus = Counting { inner: clients.events.clone(), state: state.clone() };
        start_traffic(&args, Publisher::new(bus, cell_target.clone()), &state, &traffic_stopped, &mut tasks);
    }
    // Locally with PostgreSQL: the store's panels through the query layer,
    // every 2 s, over the run so far.
    let local_queries: Option<Arc<bems_store::Store>> = match target.local.as_ref().map(|l| &l.store) {
        Some(LocalStore::Postgres { pg, .. }) => {
            Some(Arc::new(bems_store::Store::Postgres(Box::new(bems_store::postgres::PgQueries::new((**pg).clone())))))
        }
        _ => None,
    };
    if let Some(store) = local_queries.clone() {
        let (state, rx) = (state.clone(), stopped.clone());
        let since = chrono::Utc::now() - chrono::Duration::minutes(1);
        tasks.push(tokio::spawn(async move {
            let bucket = u32::try_from(state::LOCAL_BUCKET_SECS).unwrap_or(10);
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            while !*rx.borrow() {
                tick.tick().await;
                let window =
                    bems_store::query::Window::between(since, chrono::Utc::now() + chrono::Duration::minutes(1));
                let mut panels = state.lock().map(|s| s.panels_to_fill()).unwrap_or_default();
                let health = panels::fill(&*store, window, bucket, &mut panels).await;
                if let Ok(mut s) = state.lock() {
                    s.apply_store(panels, health);
                }
            }
        }));
    }
    // Queue depths, dead letters, stuck invoices (alerted once each), and on
    // AWS the panels.
    {
        let (state, rx, spec) = (state.clone(), stopped.clone(), spec.clone());
        let (sqs, sns, alert_topic, remote) =
            (clients.sqs.clone(), clients.sns.clone(), target.alert_topic.clone(), target.remote.take());
        let local_queries = local_queries.clone();
        let every = Duration::from_secs(if remote.is_some() { args.poll_secs } else { 3 });
        let sla = u32::try_from(args.sla).unwrap_or(u32::MAX);
        tasks.push(tokio::spawn(async move {
            let mut alerted = bems_ops::stuck::Alerted::default();
            let mut names: Vec<String> =
                Stage::ALL.iter().flat_map(|s| [spec.queue_name(*s), spec.dlq_name(*s)]).collect();
            names.extend([spec.status_queue_name(), spec.status_dlq_name()]);
            let mut tick = tokio::time::interval(every);
            while !*rx.borrow() {
                tick.tick().await;
                let mut queues = BTreeMap::new();
                for name in &names {
                    if let Some(q) = queue_state(&sqs, name).await {
                        queues.insert(name.clone(), q);
                    }
                }
                let mut problems = Vec::new();
                let mut stuck = bems_ops::stuck::dead_lettered(&sqs, &spec).await.unwrap_or_else(|e| {
                    // Listing needs sqs:ReceiveMessage on the DLQs, which a read-only role lacks.
                    problems.push(format!("dead-lettered invoices (their count is in the queue depths): {e}"));
                    Vec::new()
                });
                if let Some(remote) = &remote {
                    let last = state.lock().map(|s| s.panels_to_fill()).unwrap_or_default();
                    let (mut panels, health, ages) = remote.poll(&names, last).await;
                    for (name, age) in ages {
                        queues.entry(name).or_default().oldest_secs = age;
                    }
                    match bems_ops::stuck::over_sla(&remote.store, sla, 24).await {
                        Ok(late) => stuck.extend(late),
                        Err(e) => panels.problems.push(e.to_string()),
                    }
                    if let Ok(mut s) = state.lock() {
                        s.replace_panels(panels, health);
                    }
                } else if let Some(store) = &local_queries {
                    match bems_ops::stuck::over_sla(&**store, sla, 1).await {
                        Ok(late) => stuck.extend(late),
                        Err(e) => problems.push(format!("invoices over the SLA: {e}")),
                    }
                } else if let Ok(s) = state.lock() {
                    stuck.extend(s.over_sla(chrono::Utc::now().timestamp_millis()));
                }
                let fresh: Vec<bems_ops::stuck::Stuck> = alerted.new_since(&stuck).into_iter().cloned().collect();
                let sent = match &alert_topic {
                    Some(topic) if !fresh.is_empty() => {
                        let refs: Vec<&bems_ops::stuck::Stuck> = fresh.iter().collect();
                        bems_ops::stuck::alert(&sns, topic, spec.cell_id().as_str(), &refs).await.unwrap_or(0)
                    }
                    _ => 0,
                };
                if let Ok(mut s) = state.lock() {
                    s.queues = queues;
                    s.monitor_problems = problems;
                    s.stuck = stuck;
                    s.alerts_sent += sent as u64;
                }
            }
        }));
    }
    // The dashboard.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await.context("dashboard port")?;
    println!("bems-monitor: dashboard on http://{}/  (Ctrl-C stops)", listener.local_addr()?);
    {
        let (state, rx) = (state.clone(), stopped.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = web::serve(listener, state, until_stopped(rx)).await {
                eprintln!("bems-monitor: dashboard: {e}");
            }
        }));
    }

    // Progress until Ctrl-C or the duration.
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + Duration::from_secs(d));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = tick.tick() => {}
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
        if let Ok(s) = state.lock() {
            let v = s.visibility();
            println!(
                "[{:>4}s] sent {:>6}  invalid {:>4}  visible {:>7}  in DLQ {:>3}  stuck {:>3}  visibility p50 {:>5} ms p99 {:>5} ms",
                s.elapsed_secs(),
                s.sent,
                s.invalid,
                s.panels.visible,
                s.in_dlq(),
                s.stuck.len(),
                v.p50.map_or("-".into(), |v| v.to_string()),
                v.p99.map_or("-".into(), |v| v.to_string()),
            );
        }
    }
    let _ = stop_traffic.send(true);
    if target.local.is_some() {
        drain(&state, Duration::from_secs(args.drain_secs)).await;
    }
    let _ = stop.send(true);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
    }
    if let Ok(s) = state.lock() {
        let v = s.visibility();
        let ms = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
        println!(
            "summary: sent {} invoices ({} meant to fail), {} invalid never sent; {} status changes visible; {} in DLQs; {} stuck; {} alerts; visibility latency p50 {} ms, p99 {} ms, max {} ms",
            s.sent,
            s.failing_sent,
            s.invalid,
            s.panels.visible,
            s.in_dlq(),
            s.stuck.len(),
            s.alerts_sent,
            ms(v.p50),
            ms(v.p99),
            ms(s.visibility_max()),
        );
        if target.local.is_some() {
            #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
            let rate = s.panels.visible as f64 / s.traffic_secs().max(1) as f64;
            let missing = s.published.saturating_sub(s.panels.visible);
            println!(
                "load: {} events published (producer and stages), {} visible, {}; {rate:.1} visible events/s over {} s of traffic",
                s.published,
                s.panels.visible,
                if missing == 0 { "none missing".to_owned() } else { format!("{missing} NOT VISIBLE") },
                s.traffic_secs(),
            );
        }
    }
    if let Some(LocalStore::Postgres { pg, .. }) = target.local.as_ref().map(|l| &l.store) {
        if args.keep {
            println!("store: kept; open it: {}", pg.psql_command());
        } else {
            println!("store: {} (schema {}; deleted with the cell, --keep keeps it)", pg.describe(), pg.schema());
        }
    }
    let Some(local) = target.local else { return Ok(()) };
    if !args.keep {
        bems_ops::provision::teardown(&clients, &spec).await.context("delete the cell")?;
        if let Some(topic) = &target.alert_topic {
            let _ = clients.sns.delete_topic().topic_arn(topic).send().await;
        }
        if let LocalStore::Postgres { pg, .. } = &local.store {
            match pg.connect().await {
                Ok(client) => {
                    if let Err(e) =
                        client.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", pg.schema())).await
                    {
                        eprintln!("bems-monitor: could not drop the store's schema {}: {e}", pg.schema());
                    }
                }
                Err(e) => eprintln!("bems-monitor: could not drop the store's schema {}: {e}", pg.schema()),
            }
        }
        println!("bems-monitor: cell {} deleted", args.cell);
    }
    if let LocalStore::Postgres { started: true, .. } = &local.store {
        if args.keep {
            println!("bems-monitor: PostgreSQL left running for the kept store; `scripts/postgres purge` deletes it");
        } else {
            // A server this run started goes, with its data.
            let status =
                std::process::Command::new(postgres_script()).arg("purge").status().context("stop PostgreSQL")?;
            anyhow::ensure!(status.success(), "scripts/postgres purge failed ({status})");
        }
    }
    if local.started_emulators {
        let status =
            std::process::Command::new(emulators_script()).arg("down").status().context("stop the emulators")?;
        anyhow::ensure!(status.success(), "scripts/emulators down failed ({status})");
    }
    Ok(())
}

/// Waits until every published event is visible (or `limit` passes, or a
/// second Ctrl-C), so that the summary compares like with like.
async fn drain(state: &Arc<Mutex<State>>, limit: Duration) {
    if let Ok(mut s) = state.lock() {
        s.traffic_stopped();
    }
    println!("bems-monitor: traffic stopped; draining (up to {} s, Ctrl-C skips)", limit.as_secs());
    let deadline = tokio::time::Instant::now() + limit;
    // A new listener: the first Ctrl-C (if that is what stopped the
    // traffic) has completed the main loop's.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    // Done when every published event is visible and no queue holds or
    // processes anything, for long enough to span a refresh of the queue
    // states (a batch still in a processor would publish more).
    let mut quiet_since: Option<tokio::time::Instant> = None;
    loop {
        let quiet = state.lock().map(|s| s.panels.visible >= s.published && s.queues_idle()).unwrap_or(true);
        let now = tokio::time::Instant::now();
        quiet_since = if quiet { quiet_since.or(Some(now)) } else { None };
        if quiet_since.is_some_and(|t| now - t >= Duration::from_secs(4)) || now >= deadline {
            return;
        }
        tokio::select! {
            _ = &mut ctrl_c => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// A bus that counts the events it accepted into the state: what the
/// producer and the stages published, which must all become visible.
#[derive(Clone)]
struct Counting<B> {
    inner: B,
    state: Arc<Mutex<State>>,
}

impl<B: bems_core::publish::EventBus + Sync> bems_core::publish::EventBus for Counting<B> {
    async fn put_events(
        &self,
        entries: &[bems_core::envelope::PutEventsEntry],
    ) -> Result<Vec<bems_core::publish::EntryResult>, bems_core::publish::BusError> {
        let results = self.inner.put_events(entries).await?;
        let accepted = results.iter().filter(|r| matches!(r, bems_core::publish::EntryResult::Accepted(_))).count();
        if let Ok(mut s) = self.state.lock() {
            s.published += accepted as u64;
        }
        Ok(results)
    }
}

/// Resolves once the stop signal is sent.
async fn until_stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Runs the six functions of a cell on the emulators: the route forwarder,
/// the four stage processors, and the status writer into the cell's store
/// (with Timestream on moto, its stored records teed into the dashboard).
async fn start_functions(
    clients: &Clients,
    spec: &CellSpec,
    local: &LocalCell,
    target: &CellTarget,
    state: &Arc<Mutex<State>>,
    stopped: &watch::Receiver<bool>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<()> {
    let queue_url = |name: String| {
        let sqs = clients.sqs.clone();
        async move { bems_lambda::sqs::queue_url(&sqs, &name).await }
    };
    {
        let (spec, sns, sqs, rx) = (spec.clone(), clients.sns.clone(), clients.sqs.clone(), stopped.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) =
                bems_lambda::forward::run_locally(&spec, sns, sqs, Duration::from_millis(100), until_stopped(rx)).await
            {
                eprintln!("bems-monitor: route forwarder: {e}");
            }
        }));
    }
    for stage in Stage::ALL.into_iter().filter(|s| !local.without_processor.contains(s)) {
        let source = EventSource::connect(
            clients.sqs.clone(),
            queue_url(spec.queue_name(stage)).await?,
            RunnerOptions::default(),
        )
        .await?;
        let function = ProcessorFunction {
            processor: BatchProcessor::new()
                .with_dead_letter(SqsDeadLetter::new(clients.sqs.clone(), queue_url(spec.dlq_name(stage)).await?))
                .with_max_receive_count(local.options.max_receive_count),
            handler: StageProcessor::new(
                stage,
                Rules::default(),
                Publisher::new(Counting { inner: clients.events.clone(), state: state.clone() }, target.clone())
                    .with_retry(RetryPolicy { deadline: Duration::from_secs(10), ..RetryPolicy::default() }),
                NoPurchaseOrderSystem,
                NoApprovals,
            ),
        };
        let (rx, state) = (stopped.clone(), state.clone());
        tasks.push(tokio::spawn(async move { run_counted(&source, function, stage, &state, rx).await }));
    }
    let source =
        EventSource::connect(clients.sqs.clone(), queue_url(spec.status_queue_name()).await?, RunnerOptions::default())
            .await?;
    let dead_letter = SqsDeadLetter::new(clients.sqs.clone(), queue_url(spec.status_dlq_name()).await?);
    let rx = stopped.clone();
    match &local.store {
        LocalStore::Postgres { pg, .. } => {
            let sink = PostgresSink::new(bems_store::postgres::write::Writer::new((**pg).clone()));
            let writer = StatusWriter::new(sink, dead_letter)
                .in_cell(spec.partitions())
                .with_max_receive_count(local.options.max_receive_count);
            tasks.push(tokio::spawn(
                async move { source.run(writer, Duration::from_millis(100), until_stopped(rx)).await },
            ));
        }
        LocalStore::Timestream(table) => {
            let sink = Tee { inner: table.clone(), state: state.clone() };
            let writer = StatusWriter::new(sink, dead_letter)
                .in_cell(spec.partitions())
                .with_max_receive_count(local.options.max_receive_count);
            tasks.push(tokio::spawn(
                async move { source.run(writer, Duration::from_millis(100), until_stopped(rx)).await },
            ));
        }
    }
    Ok(())
}

/// Drives month-end invoice traffic onto the cell's bus.
fn start_traffic<B: bems_core::publish::EventBus + Send + Sync + 'static>(
    args: &Args,
    publisher: Publisher<B>,
    state: &Arc<Mutex<State>>,
    stopped: &watch::Receiver<bool>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) {
    let profile = Profile {
        base_per_min: args.peak * args.base_share * args.scale,
        peak_per_min: args.peak * args.scale,
        ramp: Duration::from_secs(args.ramp_secs),
    };
    println!(
        "bems-monitor: traffic from {:.0} to {:.0} status events/min over {} s (peak {:.0}/min scaled by {}); {}% failing, {}% invalid",
        profile.base_per_min,
        profile.peak_per_min,
        args.ramp_secs,
        args.peak,
        args.scale,
        args.failing * 100.0,
        args.invalid * 100.0
    );
    let (state, rx) = (state.clone(), stopped.clone());
    let run = format!("{:X}", chrono::Utc::now().timestamp() % 0xFFFFF);
    let mut generator = Generator::new(&run, args.failing, args.invalid, fastrand::u64(..));
    tasks.push(tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let mut owed = 0.0;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        while !*rx.borrow() {
            tick.tick().await;
            owed += profile.invoices_per_sec(started.elapsed()) * 0.2;
            let mut batch = Vec::new();
            while owed >= 1.0 {
                owed -= 1.0;
                match generator.make() {
                    Ok(Made::Valid { event, failing }) => {
                        if let Ok(mut s) = state.lock() {
                            s.sent_terms(event.payment_terms.net_days.get());
                            s.failing_sent += u64::from(failing);
                        }
                        batch.push(*event);
                    }
                    Ok(Made::Invalid(problem)) => {
                        if let Ok(mut s) = state.lock() {
                            s.invalid(problem);
                        }
                    }
                    Err(e) => eprintln!("bems-monitor: generator: {e}"),
                }
            }
            if batch.is_empty() {
                continue;
            }
            let accepted =
                publisher.publish(batch).await.iter().filter(|o| matches!(o, Outcome::Accepted { .. })).count();
            if let Ok(mut s) = state.lock() {
                s.sent += accepted as u64;
            }
        }
    }));
}

/// Runs a stage processor like `EventSource::run`, counting per stage the
/// records received and those returned for redelivery (the stage's error
/// rate on the dashboard).
async fn run_counted<F: bems_batch::function::BatchFunction>(
    source: &EventSource,
    mut function: F,
    stage: Stage,
    state: &Mutex<State>,
    mut stopped: watch::Receiver<bool>,
) {
    while !*stopped.borrow() {
        let idle = match source.poll_once(&mut function).await {
            Ok(stats) => {
                if let Ok(mut s) = state.lock() {
                    s.processed(stage, stats.received as u64, stats.failed as u64);
                }
                stats.received == 0
            }
            Err(e) => {
                eprintln!("bems-monitor: {stage} processor: {e}");
                true
            }
        };
        if idle {
            tokio::select! {
                _ = stopped.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
}

/// A queue's depth and in-flight count.
async fn queue_state(sqs: &aws_sdk_sqs::Client, name: &str) -> Option<state::QueueState> {
    let depth = bems_ops::stuck::queue_depth(sqs, name).await?;
    Some(state::QueueState { depth: depth.waiting, in_flight: depth.in_flight, oldest_secs: 0 })
}
