//! The PostgreSQL store under load, on the server at `BEMS_POSTGRES_URL`
//! (`scripts/bench-store` starts one of its own and runs this):
//!
//! - `write`: rows per second through the writer at Lambda's shape (one
//!   10-row transaction per call, one connection per status-queue message
//!   group, 16 and 64 of them) and in bulk (1,000-row transactions);
//! - `queries`: every panel query and the history of one invoice, over a
//!   one-hour window at the peak rate (3.6 million rows in the last hour)
//!   with only that hour stored, then with 20 million rows spread over the
//!   13 monthly partitions of a retention period, and over wider windows;
//! - `archive`: one month of a million status changes archived to a
//!   directory (both row tables: two million rows exported, checked,
//!   recorded, dropped), as CSV plain and gzipped, one after the other.
//!
//! Every row goes through the writer (so the rollups, versions and
//! invoices are what the writer makes), and the rollups are checked
//! against the rows of the last hour at the end.
//!
//! `cargo bench -p bems-store --bench store -- write|queries|archive|all`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bems_core::{Stage, Status};
use bems_store::StatusRow;
use bems_store::postgres::write::Writer;
use bems_store::postgres::{PgQueries, Postgres, Schema, migrate, partitions};
use bems_store::query::{Queries, Window};
use chrono::{DateTime, Utc};

/// The fixture event as a row, to copy and change.
fn template() -> StatusRow {
    let event = bems_core::Validator::new(bems_core::ValidationOptions {
        max_future_skew: None,
        ..bems_core::ValidationOptions::default()
    })
    .parse(include_bytes!("../../bems-core/fixtures/example-invoice-event.json"))
    .expect("fixture");
    StatusRow::new(&event, chrono::Utc::now())
}

const LIFECYCLE: [(Stage, Status); 5] = [
    (Stage::Ingestion, Status::Submitted),
    (Stage::Reconciliation, Status::Ingested),
    (Stage::Authorization, Status::Reconciled),
    (Stage::Posting, Status::Authorized),
    (Stage::Posting, Status::Posted),
];

const CURRENCIES: [(&str, u32); 6] = [("EUR", 2), ("USD", 2), ("GBP", 2), ("CHF", 2), ("JPY", 0), ("SEK", 2)];

/// The `n`-th status change of a block of rows spread evenly over
/// `[start, start + span)`: invoice `n / 5`, status `n % 5`, in one of 16
/// partitions. Every value is a function of `(block, n)`.
fn row(base: &StatusRow, block: &str, n: u64, start: DateTime<Utc>, span: Duration, count: u64) -> StatusRow {
    let invoice = n / 5;
    let step = usize::try_from(n % 5).unwrap_or(0);
    let (stage, status) = LIFECYCLE[step];
    let mut r = base.clone();
    r.invoice_id = format!("INV-{block}-{invoice:08}");
    r.stage = stage;
    r.status = status;
    r.previous_status = step.checked_sub(1).map(|p| LIFECYCLE[p].1);
    #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss, clippy::cast_sign_loss)]
    let offset = (span.as_micros() as f64 * (n as f64 / count as f64)) as i64;
    let at = bems_store::row::micros(start + chrono::Duration::microseconds(offset));
    r.occurred_at = at;
    let stage_ms = i64::try_from((n.wrapping_mul(7_919)) % 30_000).unwrap_or(0);
    r.stage_latency_ms = (step > 0).then_some(stage_ms);
    r.previous_occurred_at = (step > 0).then(|| at - chrono::Duration::milliseconds(stage_ms));
    r.end_to_end_latency_ms = Some(i64::try_from(step as u64 * 20_000 + n % 9_000).unwrap_or(0));
    r.submitted_at = (step > 0).then(|| at - chrono::Duration::seconds(20 * step as i64));
    r.partition = i16::try_from(invoice % 16 + 1).unwrap_or(1);
    let (currency, scale) = CURRENCIES[usize::try_from(invoice % 6).unwrap_or(0)];
    r.currency = currency.to_owned();
    r.amount = rust_decimal::Decimal::new(i64::try_from(invoice % 1_000_000 + 100).unwrap_or(100), scale);
    r.net_days = [30, 45, 60, 90][usize::try_from(invoice % 4).unwrap_or(0)];
    r.due_date = at.date_naive() + chrono::Duration::days(i64::from(r.net_days));
    r.event_id = uuid::Uuid::from_u64_pair(invoice, n);
    r.version = at + chrono::Duration::milliseconds(500);
    r
}

async fn fresh(url: &str, name: &str) -> Postgres {
    let pg = Postgres::new(url, Schema::new(name).expect("schema")).expect("url");
    let mut admin = pg.connect().await.expect("connect");
    admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE")).await.expect("drop");
    migrate::migrate(&mut admin, pg.schema()).await.expect("migrate");
    partitions::ensure(&mut admin, pg.schema(), Utc::now() - chrono::Duration::days(400), 14)
        .await
        .expect("partitions");
    pg
}

/// CPU seconds used so far: by the whole machine (every core, from
/// `/proc/stat`) and by this process (`/proc/self/stat`). The server is
/// most of the difference: nothing else runs during a benchmark.
fn cpu_seconds() -> (f64, f64) {
    let ticks = 100.0; // USER_HZ on Linux
    let machine = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<f64> =
        machine.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal
    let busy: f64 = fields.iter().enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    let own = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = own.rsplit(')').next().unwrap_or_default();
    let f: Vec<f64> = after_name.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    // Fields 14 and 15 of the whole line: 12 and 13 after the name's ')'.
    let mine = f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0);
    (busy / ticks, mine / ticks)
}

/// `connections` writers for `secs` seconds, each writing `batch`-row
/// transactions of new rows of its own message group(s).
async fn write_rate(pg: &Postgres, connections: u64, batch: usize, secs: u64) -> (f64, f64, Duration, Duration) {
    let written = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let base = template();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (pg, written, latencies, base) = (pg.clone(), written.clone(), latencies.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let writer = Writer::new(pg);
            writer.connect().await.expect("connect");
            let mut n = 0_u64;
            let start = Utc::now() - chrono::Duration::minutes(5);
            while Instant::now() < deadline {
                // One message group per connection: a stage and a
                // partition of its own, as the status queue's groups are.
                let rows: Vec<StatusRow> = (0..batch)
                    .map(|_| {
                        n += 1;
                        let mut r =
                            row(&base, &format!("W{c}"), n * 5 + c % 4, start, Duration::from_secs(300), 1 << 40);
                        r.partition = i16::try_from(c / 4 + 1).unwrap_or(1);
                        r
                    })
                    .collect();
                let t = Instant::now();
                let out = writer.write(&rows).await.expect("write");
                let took = t.elapsed();
                assert!(out.iter().all(|o| o.is_done()), "{out:?}");
                written.fetch_add(rows.len() as u64, Ordering::Relaxed);
                if let Ok(mut l) = latencies.lock() {
                    l.push(took);
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let rows = written.load(Ordering::Relaxed);
    let mut l = latencies.lock().expect("latencies").clone();
    l.sort_unstable();
    #[allow(clippy::cast_precision_loss)]
    let rate = rows as f64 / secs as f64;
    #[allow(clippy::cast_precision_loss)]
    let tx = l.len() as f64 / secs as f64;
    (rate, tx, l[l.len() / 2], l[l.len() * 99 / 100])
}

async fn write(url: &str) {
    println!("== write: new rows per second through the writer (durable: fsync, synchronous_commit on)");
    for (connections, batch) in [(16, 10), (64, 10), (1, 1_000), (4, 1_000)] {
        let pg = fresh(url, "bench_write").await;
        let (machine, client) = cpu_seconds();
        let (rate, tx, p50, p99) = write_rate(&pg, connections, batch, 20).await;
        let (machine_after, client_after) = cpu_seconds();
        let (all, mine) = (machine_after - machine, client_after - client);
        println!(
            "{connections:>3} connections x {batch:>4}-row transactions: {rate:>9.0} rows/s ({tx:.0} tx/s; a transaction p50 {:.1} ms, p99 {:.1} ms); CPU over 20 s: {:.1} core-s in all, {:.1} of them the benchmark's client, so about {:.0} rows per server core-second",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            all,
            mine,
            rate * 20.0 / (all - mine).max(0.1)
        );
    }
}

/// Writes `count` rows of `block` spread over `[start, start + span)` in
/// 1,000-row transactions over 4 connections (each its own partitions).
async fn load(pg: &Postgres, block: &str, count: u64, start: DateTime<Utc>, span: Duration) -> f64 {
    let t = Instant::now();
    let base = template();
    let mut tasks = Vec::new();
    for c in 0..4_u64 {
        let (pg, base, block) = (pg.clone(), base.clone(), block.to_owned());
        tasks.push(tokio::spawn(async move {
            let writer = Writer::new(pg);
            let mut batch = Vec::with_capacity(1_000);
            // Invoices of partitions c+1, c+5, ...: invoice % 16 % 4 == c.
            for n in (0..count).filter(|n| (n / 5) % 4 == c) {
                batch.push(row(&base, &block, n, start, span, count));
                if batch.len() == 1_000 {
                    writer.write(&batch).await.expect("write");
                    batch.clear();
                }
            }
            if !batch.is_empty() {
                writer.write(&batch).await.expect("write");
            }
        }));
    }
    for t in tasks {
        t.await.expect("loader");
    }
    #[allow(clippy::cast_precision_loss)]
    let rate = count as f64 / t.elapsed().as_secs_f64();
    rate
}

/// What autovacuum does for a table filled over hours, done now for one
/// filled in minutes: statistics, and the BRIN summaries of its pages
/// (`autosummarize` summarises a page range once it is full; a bulk load
/// outruns it).
async fn settle(pg: &Postgres) {
    let client = pg.connect().await.expect("connect");
    for table in ["status_changes", "status_minute", "money_minute", "invoices"] {
        client.batch_execute(&format!("VACUUM (ANALYZE) {}.{table}", pg.schema())).await.expect("vacuum");
    }
}

/// Median and 95th percentile of `runs` runs of `f`.
async fn timed<F, Fut, T>(runs: usize, mut f: F) -> (Duration, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let _ = f().await;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let _ = f().await;
        times.push(t.elapsed());
    }
    times.sort_unstable();
    (times[runs / 2], times[(runs * 95).div_ceil(100) - 1])
}

async fn panel_times(q: &PgQueries, window: Window, label: &str) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let rates = [("EUR", 1.0), ("USD", 0.92), ("GBP", 1.17), ("CHF", 1.05), ("JPY", 0.0062), ("SEK", 0.088)];
    let runs = 15;
    let results = [
        ("visible", timed(runs, || q.visible(window)).await),
        ("stage counts (60 s)", timed(runs, || q.stage_counts(window, 60)).await),
        ("latencies", timed(runs, || q.latencies(window)).await),
        ("money", timed(runs, || q.money(window)).await),
        ("largest 10", timed(runs, || q.largest_submitted(window, &rates, 10)).await),
        ("open invoices", timed(runs, || q.open_invoices(window, 120, 1_000)).await),
    ];
    for (name, (p50, p95)) in results {
        println!("  {label:<34} {name:<20} median {:>8.1} ms  p95 {:>8.1} ms", ms(p50), ms(p95));
    }
}

async fn queries(url: &str) {
    println!("== queries: panel queries and one invoice's history (median and p95 of 15 runs, after one warm-up)");
    let pg = fresh(url, "bench_queries").await;
    let now = Utc::now();
    let hour = Duration::from_secs(3_600);
    // The peak: 60,000 status changes a minute for an hour, ending two
    // minutes from now, so that the open minute holds a minute's rows while
    // the queries run (at the peak it always does).
    let rate = load(&pg, "PEAK", 3_600_000, now - chrono::Duration::minutes(58), hour).await;
    println!(
        "loaded 3,600,000 rows (an hour at 60,000/min, its last two minutes still to come) at {rate:.0} rows/s (4 connections, 1,000-row transactions)"
    );
    settle(&pg).await;
    let q = PgQueries::new(pg.clone());
    // Windows end now: the open minute's rows so far, as a dashboard asks.
    let window = Window::last_minutes(Utc::now(), 60);
    panel_times(&q, window, "3.6 M rows stored, 1-h window").await;
    let history = |invoice: String| {
        let q = &q;
        async move { q.history(&invoice).await }
    };
    let (p50, p95) = timed(50, || history(format!("INV-PEAK-{:08}", fastrand::u64(0..720_000)))).await;
    println!(
        "  {:<34} {:<20} median {:>8.2} ms  p95 {:>8.2} ms",
        "3.6 M rows stored",
        "history",
        p50.as_secs_f64() * 1e3,
        p95.as_secs_f64() * 1e3
    );

    // 12 earlier months: a month-end hour of each, 1.4 M rows.
    let t = Instant::now();
    for m in 1..=12_u32 {
        // The 28th of each earlier month, 22:00 to 23:00.
        let month = partitions::month_of(now).checked_sub_months(chrono::Months::new(m)).expect("month");
        let month_end = (month + chrono::Duration::days(27)).and_hms_opt(22, 0, 0).expect("time").and_utc();
        load(&pg, &format!("M{m:02}"), 1_400_000, month_end, hour).await;
    }
    println!("loaded 16,800,000 more rows over 12 earlier months in {:.0} s", t.elapsed().as_secs_f64());
    // The current minutes at the peak again, as the open minute has them.
    let now = Utc::now();
    load(&pg, "NOW", 120_000, now, Duration::from_secs(120)).await;
    settle(&pg).await;
    let client = pg.connect().await.expect("connect");
    let rows: i64 = client
        .query_one(&format!("SELECT count(*) FROM {}.status_changes", pg.schema()), &[])
        .await
        .expect("count")
        .get(0);
    let size: String = client
        .query_one(
            "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind IN ('r', 'i')",
            &[&pg.schema().as_str()],
        )
        .await
        .expect("size")
        .get(0);
    println!("{rows} rows stored in 13 monthly partitions; schema size {size} (tables and indexes)");
    let window = Window::last_minutes(Utc::now(), 60);
    panel_times(&q, window, "20.5 M rows stored, 1-h window").await;
    for minutes in [15_i64, 6 * 60, 24 * 60] {
        let w = Window::last_minutes(Utc::now(), u32::try_from(minutes).unwrap_or(60));
        panel_times(&q, w, &format!("20.5 M rows stored, {minutes}-min window")).await;
    }
    let (p50, p95) =
        timed(50, || history(format!("INV-M{:02}-{:08}", fastrand::u64(1..=12), fastrand::u64(0..280_000)))).await;
    println!(
        "  {:<34} {:<20} median {:>8.2} ms  p95 {:>8.2} ms",
        "20.5 M rows stored",
        "history",
        p50.as_secs_f64() * 1e3,
        p95.as_secs_f64() * 1e3
    );
    let t = Instant::now();
    let mismatches = bems_store::postgres::check::rollup_mismatches(
        &client,
        pg.schema(),
        window.from,
        Utc::now() + chrono::Duration::minutes(3),
    )
    .await
    .expect("check");
    println!(
        "rollups of the last hour against its rows: {} mismatches (the check took {:.1} s)",
        mismatches.len(),
        t.elapsed().as_secs_f64()
    );
    assert!(mismatches.is_empty(), "{mismatches:?}");
}

/// A month of `ROWS` status changes archived, plain and gzipped.
async fn archive(url: &str) {
    use bems_store::postgres::archive::{Directory, archive_month};
    use bems_store::postgres::export::{Compression, Encoding, Format};
    const ROWS: u64 = 1_000_000;
    let month = partitions::month_of(Utc::now()).checked_sub_months(chrono::Months::new(6)).expect("month");
    let start = chrono::TimeZone::from_utc_datetime(&Utc, &month.and_hms_opt(0, 0, 0).expect("midnight"));
    let dir = std::env::temp_dir().join("bems-bench-archive");
    for compression in [Compression::None, Compression::Gzip] {
        let name = format!("bench_archive_{compression:?}").to_lowercase();
        let pg = fresh(url, &name).await;
        let rate = load(&pg, "ARC", ROWS, start, Duration::from_secs(27 * 86_400)).await;
        let mut client = pg.connect().await.expect("connect");
        let _ = std::fs::remove_dir_all(&dir);
        let (cpu0, own0) = cpu_seconds();
        let t = Instant::now();
        let encoding = Encoding { format: Format::Csv, compression };
        let done =
            archive_month(&mut client, pg.schema(), month, &Directory::new(&dir), encoding).await.expect("archive");
        let secs = t.elapsed().as_secs_f64();
        let (cpu1, own1) = cpu_seconds();
        let rows: u64 = done.files.iter().map(|f| f.rows).sum();
        let bytes: u64 = done.files.iter().map(|f| f.bytes).sum();
        #[allow(clippy::cast_precision_loss)]
        let (rows_f, mb) = (rows as f64, bytes as f64 / 1e6);
        println!(
            "archive csv {compression:?}: {rows} rows (loaded at {rate:.0} rows/s) in {secs:.1} s = {:.0} rows/s; \
             {mb:.1} MB = {:.0} bytes/row; CPU: this process {:.1} s, machine {:.1} s",
            rows_f / secs,
            bytes as f64 / rows_f,
            own1 - own0,
            cpu1 - cpu0
        );
        client.batch_execute(&format!("DROP SCHEMA {name} CASCADE")).await.expect("drop");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    let Ok(url) = std::env::var("BEMS_POSTGRES_URL") else {
        eprintln!("set BEMS_POSTGRES_URL (scripts/bench-store starts a server and sets it)");
        return;
    };
    // `cargo bench` passes `--bench`; the first other argument picks.
    let what = std::env::args().skip(1).find(|a| !a.starts_with("--")).unwrap_or_else(|| "all".into());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        if what == "write" || what == "all" {
            write(&url).await;
        }
        if what == "queries" || what == "all" {
            queries(&url).await;
        }
        if what == "archive" || what == "all" {
            archive(&url).await;
        }
        // The peak hour alone, left in schema bench_peak, to look at plans.
        if what == "peak" {
            let pg = fresh(&url, "bench_peak").await;
            let now = Utc::now();
            let rate =
                load(&pg, "PEAK", 3_600_000, now - chrono::Duration::minutes(58), Duration::from_secs(3_600)).await;
            println!("loaded 3,600,000 rows into bench_peak at {rate:.0} rows/s");
        }
    });
}
