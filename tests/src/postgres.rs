//! PostgreSQL for the end-to-end tests: the cell's store on the shared
//! test server (`BEMS_POSTGRES_URL`, from `scripts/postgres`), and a
//! private server for the tests that stop, crash and restart one.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use bems_core::routing::CellSpec;
use bems_store::postgres::{Postgres, Schema, migrate, partitions};

/// Whether a test that finds no PostgreSQL must fail rather than skip
/// (`scripts/test` sets `BEMS_REQUIRE_POSTGRES=1` once it has started it).
pub fn postgres_required() -> bool {
    std::env::var("BEMS_REQUIRE_POSTGRES").as_deref() == Ok("1")
}

/// The shared test server's URL, or `None` (the caller skips).
pub fn postgres_url() -> Option<String> {
    let url = std::env::var("BEMS_POSTGRES_URL").ok();
    assert!(url.is_some() || !postgres_required(), "BEMS_REQUIRE_POSTGRES=1 but BEMS_POSTGRES_URL is not set");
    url
}

/// `spec`'s store on the server at `url`: its schema migrated, partitions
/// from last month to three ahead, as `bems store migrate` and `bems store
/// partitions` make them.
pub async fn cell_store(url: &str, spec: &CellSpec) -> Postgres {
    let pg = Postgres::new(url, Schema::of_cell(spec.cell_id())).expect("url");
    let mut admin = pg.connect().await.expect("connect to PostgreSQL");
    migrate::migrate(&mut admin, pg.schema()).await.expect("migrate");
    partitions::ensure(&mut admin, pg.schema(), chrono::Utc::now() - chrono::Duration::days(31), 4)
        .await
        .expect("partitions");
    pg
}

/// `count(*)` of a query's rows.
pub async fn count(pg: &Postgres, sql: &str) -> i64 {
    let client = pg.connect().await.expect("connect");
    client.query_one(&format!("SELECT count(*) FROM ({sql}) q"), &[]).await.expect("count").get(0)
}

/// Polls until `sql`'s count reaches `expected` or `timeout` passes; the
/// last count.
pub async fn wait_for_count(pg: &Postgres, sql: &str, expected: i64, timeout: Duration) -> i64 {
    let started = std::time::Instant::now();
    loop {
        let n = match pg.connect().await {
            Ok(client) => match client.query_one(&format!("SELECT count(*) FROM ({sql}) q"), &[]).await {
                Ok(row) => row.get(0),
                Err(_) => -1,
            },
            Err(_) => -1,
        };
        if n >= expected || started.elapsed() > timeout {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The differences between the rollups and the rows of `pg`'s store.
pub async fn rollup_mismatches(pg: &Postgres) -> Vec<bems_store::postgres::check::Mismatch> {
    let client = pg.connect().await.expect("connect");
    let now = chrono::Utc::now();
    bems_store::postgres::check::rollup_mismatches(
        &client,
        pg.schema(),
        now - chrono::Duration::days(40),
        now + chrono::Duration::days(1),
    )
    .await
    .expect("rollup check")
}

/// A PostgreSQL server of the test's own (`scripts/postgres` with a port
/// and data directory of its own), to stop, crash and restart; deleted
/// when dropped.
#[derive(Debug)]
pub struct PrivateServer {
    port: u16,
    data: PathBuf,
    run: PathBuf,
    tls: bool,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres")
}

fn free_port() -> u16 {
    // Bind port 0, read the port, let it go: the server binds it next.
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(55_432)
}

impl PrivateServer {
    /// A new server, started.
    pub fn start() -> PrivateServer {
        PrivateServer::started(false)
    }

    /// A new server that takes TLS connections only (`BEMS_PG_TLS=1`: a
    /// CA of its own, a certificate for `localhost` only), started.
    pub fn start_tls() -> PrivateServer {
        PrivateServer::started(true)
    }

    fn started(tls: bool) -> PrivateServer {
        let port = free_port();
        let data = PathBuf::from(format!("/var/tmp/bems-postgres-test-{port}-{}", std::process::id()));
        let run = std::env::temp_dir().join(format!("bems-pg-run-{port}"));
        let server = PrivateServer { port, data, run, tls };
        server.script("up");
        server
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The certificate of its CA (a TLS server's).
    pub fn ca_file(&self) -> PathBuf {
        self.data.join("ca.crt")
    }

    fn script(&self, command: &str) {
        let out = Command::new(script())
            .arg(command)
            .env("BEMS_PG_PORT", self.port.to_string())
            .env("BEMS_PG_DATA", &self.data)
            .env("BEMS_RUN", &self.run)
            .env("BEMS_PG_TLS", if self.tls { "1" } else { "0" })
            .output()
            .expect("run scripts/postgres");
        assert!(
            out.status.success(),
            "scripts/postgres {command}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Its connection string, as the owner `bems` (a TLS server's by the
    /// name its certificate carries, verified against its CA).
    pub fn url(&self) -> String {
        self.url_as("bems:bems")
    }

    /// Its connection string as `login` (`user` or `user:password`).
    pub fn url_as(&self, login: &str) -> String {
        if self.tls {
            format!(
                "postgres://{login}@localhost:{}/bems?sslmode=verify-full&sslrootcert={}",
                self.port,
                self.ca_file().display()
            )
        } else {
            format!("postgres://{login}@127.0.0.1:{}/bems", self.port)
        }
    }

    /// Starts it again (after [`PrivateServer::crash`] or
    /// [`PrivateServer::stop`]); it recovers from its WAL.
    pub fn restart(&self) {
        self.script("up");
    }

    /// Stops it as `pg_ctl stop -m immediate` does: no checkpoint, no
    /// goodbye to clients; the restart replays the WAL, as after a crash.
    pub fn crash(&self) {
        self.script("crash");
    }

    /// Stops it cleanly (fast shutdown).
    pub fn stop(&self) {
        self.script("down");
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("purge")
            .env("BEMS_PG_PORT", self.port.to_string())
            .env("BEMS_PG_DATA", &self.data)
            .env("BEMS_RUN", &self.run)
            .output();
        let _ = std::fs::remove_dir_all(&self.run);
    }
}
