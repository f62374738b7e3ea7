#![allow(dead_code)] // Each test binary uses a part of these helpers.

//! Running the local cell binary from a test: its output read line by line
//! on a thread, and the process waited for when the test ends, so that it
//! still stops at its `--duration` and deletes its cell after a failed
//! assertion.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A PostgreSQL server of the test's own that the local cell starts
/// (`scripts/postgres` with this port, data directory and run directory),
/// so that the test can stop and start it under the running cell.
pub(crate) struct PrivatePostgres {
    pub(crate) port: u16,
    data: std::path::PathBuf,
    run: std::path::PathBuf,
}

impl PrivatePostgres {
    /// Settings for a new server (not started).
    pub(crate) fn new() -> PrivatePostgres {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_or(55_433, |a| a.port());
        PrivatePostgres {
            port,
            data: format!("/var/tmp/bems-postgres-monitor-{port}-{}", std::process::id()).into(),
            run: std::env::temp_dir().join(format!("bems-pg-monitor-{port}")),
        }
    }

    /// The variables that point `scripts/postgres` at it.
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("BEMS_PG_PORT", self.port.to_string()),
            ("BEMS_PG_DATA", self.data.display().to_string()),
            ("BEMS_RUN", self.run.display().to_string()),
        ]
    }

    /// Its connection string.
    pub(crate) fn url(&self) -> String {
        format!("postgres://bems:bems@127.0.0.1:{}/bems", self.port)
    }

    /// Runs `scripts/postgres <command>` on it.
    pub(crate) fn script(&self, command: &str) {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres");
        let out = Command::new(script).arg(command).envs(self.env()).output().expect("scripts/postgres");
        assert!(out.status.success(), "scripts/postgres {command}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres");
        let _ = Command::new(script).arg("purge").envs(self.env()).output();
        let _ = std::fs::remove_dir_all(&self.run);
    }
}

/// The shared test PostgreSQL (`BEMS_POSTGRES_URL`), or `None` (skipped).
pub(crate) fn postgres() -> Option<String> {
    let url = std::env::var("BEMS_POSTGRES_URL").ok();
    if url.is_none() {
        assert!(
            std::env::var_os("BEMS_REQUIRE_POSTGRES").is_none(),
            "BEMS_REQUIRE_POSTGRES=1 but no BEMS_POSTGRES_URL"
        );
        eprintln!("skipped: set BEMS_POSTGRES_URL (scripts/test does)");
    }
    url
}

/// The emulators' endpoints, or `None` (the test is skipped, saying so).
pub(crate) fn emulators() -> Option<(String, String)> {
    let (Ok(localstack), Ok(moto)) = (std::env::var("BEMS_LOCALSTACK_URL"), std::env::var("BEMS_MOTO_URL")) else {
        assert!(std::env::var_os("BEMS_REQUIRE_EMULATORS").is_none(), "BEMS_REQUIRE_EMULATORS=1 but no emulators");
        eprintln!("skipped: set BEMS_LOCALSTACK_URL and BEMS_MOTO_URL (scripts/test does)");
        return None;
    };
    Some((localstack, moto))
}

/// A cell id no other run uses.
pub(crate) fn fresh_cell(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{nanos:08x}")
}

/// A running local cell.
pub(crate) struct LocalCell {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    /// Every line read so far.
    pub(crate) seen: Vec<String>,
}

impl LocalCell {
    /// Starts `bems-monitor` with `args` on the emulators, its store on
    /// the shared test PostgreSQL (`BEMS_POSTGRES_URL`).
    pub(crate) fn start(localstack: &str, moto: &str, args: &[&str]) -> LocalCell {
        LocalCell::start_with(localstack, moto, args, None)
    }

    /// Starts `bems-monitor` with `args` on the emulators; with `private`,
    /// the cell starts that PostgreSQL server itself (and deletes it).
    pub(crate) fn start_with(
        localstack: &str,
        moto: &str,
        args: &[&str],
        private: Option<&PrivatePostgres>,
    ) -> LocalCell {
        let mut command = Command::new(env!("CARGO_BIN_EXE_bems-monitor"));
        command.args(args).env("BEMS_LOCALSTACK_URL", localstack).env("BEMS_MOTO_URL", moto);
        if let Some(private) = private {
            command.env_remove("BEMS_POSTGRES_URL").envs(private.env());
        }
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("start bems-monitor");
        let (lines_tx, lines) = mpsc::channel::<String>();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            // Keeps reading after the test stopped listening, so the cell
            // can finish its run and delete itself.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("{line}");
                let _ = lines_tx.send(line);
            }
        });
        LocalCell { child: Some(child), lines, seen: Vec::new() }
    }

    /// What follows `marker` in the first line holding it, waiting up to
    /// `timeout`.
    pub(crate) fn after(&mut self, marker: &str, timeout: Duration) -> String {
        if let Some(found) = self.seen.iter().find_map(|l| l.split(marker).nth(1)) {
            return found.to_owned();
        }
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_secs(1)) {
                let found = line.split(marker).nth(1).map(str::to_owned);
                self.seen.push(line);
                if let Some(found) = found {
                    return found;
                }
            }
        }
        panic!("no line with {marker:?} within {timeout:?}: {:?}", self.seen)
    }

    /// The API id and key the cell printed: `API <id> (key <key>)`.
    pub(crate) fn ingress(&mut self) -> (String, String) {
        let rest = self.after("; API ", Duration::from_secs(120));
        let (id, key) = rest.split_once(" (key ").expect("API <id> (key <key>)");
        (id.to_owned(), key.trim_end_matches(')').to_owned())
    }

    /// Waits for the process to end: whether it succeeded, and the lines
    /// it printed after those already read.
    pub(crate) fn finish(mut self) -> (bool, Vec<String>) {
        let status = self.child.take().expect("the child").wait().expect("bems-monitor ends after --duration");
        let rest: Vec<String> = self.lines.try_iter().collect();
        (status.success(), rest)
    }
}

impl Drop for LocalCell {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

/// The spec of the local cell `cell` (2 partitions, as the tests start it).
pub(crate) fn spec(cell: &str) -> bems_core::routing::CellSpec {
    use bems_core::fields::{AccountId, CellId, Region};
    use bems_core::partition::PartitionCount;
    bems_core::routing::CellSpec::new(
        CellId::new(cell).expect("cell"),
        Region::new("us-east-1").expect("region"),
        AccountId::new("000000000000").expect("account"),
        PartitionCount::new(2).expect("partitions"),
    )
    .expect("spec")
}

/// Runs `bems smoke`'s check against the local cell `cell` (its API `api`
/// with `key`, its store on the PostgreSQL at `store`), waiting `timeout`
/// per step.
pub(crate) fn smoke_within(
    localstack: &str,
    store: &str,
    cell: &str,
    api: &str,
    key: &str,
    timeout: Duration,
) -> bems_ops::smoke::Report {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(localstack)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new("test", "test", None, None, "smoke"))
            .load()
            .await;
        let spec = spec(cell);
        let ingress = bems_ops::ingress::Ingress { rest_api_id: api.to_owned(), api_key: key.to_owned() };
        let url = ingress.localstack_url(localstack, bems_core::Stage::Ingestion);
        let choice = bems_ops::store::StoreChoice::Postgres { url: store.to_owned() };
        let store = bems_ops::store::open(&choice, &spec, &config).await.expect("the store");
        let options = bems_ops::smoke::Options { timeout, poll: Duration::from_secs(1) };
        bems_ops::smoke::smoke(&spec, &url, key, &store, &aws_sdk_sqs::Client::new(&config), options)
            .await
            .expect("the smoke test runs")
    })
}

/// [`smoke_within`] with a minute per step.
pub(crate) fn smoke(localstack: &str, store: &str, cell: &str, api: &str, key: &str) -> bems_ops::smoke::Report {
    smoke_within(localstack, store, cell, api, key, Duration::from_secs(60))
}
