//! The store on PostgreSQL.
//!
//! - [`Postgres`]: where the store is (a connection string and the cell's
//!   schema) and how to connect ([`connect`]: TLS, verified; a password
//!   from the string or a [`connect::PasswordSource`] such as an RDS IAM
//!   token, [`iam`]); every connection runs in UTC.
//! - [`migrate`]: the committed migrations, applied by a command under an
//!   advisory lock, never by a writer at start-up.
//! - [`partitions`]: monthly partitions created ahead, and the rows that
//!   landed in the default partition (an alarm).
//! - [`mod@write`]: the writer, with Timestream's idempotency contract.
//! - [`roles`]: the writer's and readers' database roles and grants.
//! - [`PgQueries`]: the query layer ([`crate::query::Queries`]).
//! - [`check`]: the rollups against the rows they summarise.
//! - [`export`]: an auditor's export of a period, with its manifest.
//! - [`archive`]: old months moved to an object store and dropped, once
//!   what was stored is checked.
//!
//! Errors are classified by SQLSTATE ([`ErrorClass`]), never by their text.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::error::SqlState;

pub mod archive;
pub mod check;
pub mod connect;
#[cfg(feature = "data-api")]
#[cfg_attr(docsrs, doc(cfg(feature = "data-api")))]
pub mod data_api;
pub mod export;
#[cfg(feature = "rds-iam")]
#[cfg_attr(docsrs, doc(cfg(feature = "rds-iam")))]
pub mod iam;
pub mod migrate;
pub mod partitions;
mod queries;
pub mod roles;
pub mod sql;
pub mod write;

pub use queries::{PgQueries, SqlStore};
/// A connection ([`Postgres::connect`]).
pub use tokio_postgres::Client;

/// The engine's name in errors.
pub(crate) const ENGINE: &str = "postgres";

/// A schema name: lowercase letters, digits and `_`, starting with a
/// letter or `_`, at most 63 bytes (PostgreSQL's limit), so it needs no
/// quoting and cannot inject SQL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Schema(String);

impl Schema {
    /// Checks `name`.
    pub fn new(name: impl Into<String>) -> Result<Schema, ConfigError> {
        let name = name.into();
        let ok = !name.is_empty()
            && name.len() <= 63
            && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok { Ok(Schema(name)) } else { Err(ConfigError::Schema(name)) }
    }

    /// The schema of the cell `cell`
    /// ([`bems_core::contract::store_name`]). A cell id is lowercase
    /// letters, digits and hyphens, so its schema name is always valid.
    pub fn of_cell(cell: &bems_core::fields::CellId) -> Schema {
        Schema(bems_core::contract::store_name(cell))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `schema.name`, for SQL.
    pub(crate) fn table(&self, name: &str) -> String {
        format!("{}.{name}", self.0)
    }
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The connection string does not parse.
    #[error("the PostgreSQL connection string does not parse: {0}")]
    Url(#[source] tokio_postgres::Error),
    /// The schema name is not a plain lowercase identifier.
    #[error("{0:?} is not a schema name (lowercase letters, digits and _, at most 63 bytes)")]
    Schema(String),
    /// `sslmode` or `sslrootcert` cannot work.
    #[error("the PostgreSQL connection string's TLS settings: {0}")]
    Tls(String),
    /// A password fetched per connection (an IAM token) over a connection
    /// that may not be encrypted.
    #[error(
        "a password from {0} is sent only over TLS: set sslmode=verify-full (and sslrootcert) in the connection string"
    )]
    PasswordWithoutTls(String),
    /// The connection string names no host to connect to over TCP.
    #[error("the PostgreSQL connection string names no TCP host")]
    NoHost,
}

/// Where the store is: a server and the cell's schema in it, and how to
/// connect to it.
#[derive(Clone)]
pub struct Postgres {
    config: tokio_postgres::Config,
    schema: Schema,
    tls: connect::TlsParams,
    /// `None` for `sslmode=disable`.
    connector: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    password: Option<Arc<dyn connect::PasswordSource>>,
}

impl fmt::Debug for Postgres {
    // The configuration holds the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Postgres")
            .field("server", &self.describe())
            .field("schema", &self.schema)
            .field("tls", &self.tls)
            .field("password", &self.password)
            .finish()
    }
}

impl Postgres {
    /// The store in `schema` of the server at `url`
    /// (`postgres://user:password@host:port/database?sslmode=verify-full&sslrootcert=ca.pem`
    /// or the key=value form; TLS as [`connect`] says). A CA file that
    /// cannot be read is refused here, not at the first connection.
    pub fn new(url: &str, schema: Schema) -> Result<Postgres, ConfigError> {
        let (url, tls) = connect::take_tls_params(url)?;
        let mut config: tokio_postgres::Config = url.parse().map_err(ConfigError::Url)?;
        config.ssl_mode(connect::driver_mode(&tls));
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("bems");
        }
        let connector = connect::connector(&tls)?;
        Ok(Postgres { config, schema, tls, connector, password: None })
    }

    /// Each new connection's password from `source` (an RDS IAM token:
    /// [`iam::RdsIamAuth`]) instead of the connection string; refused
    /// unless the connection string requires TLS.
    pub fn with_password_source(mut self, source: Arc<dyn connect::PasswordSource>) -> Result<Postgres, ConfigError> {
        if self.tls.mode != connect::SslMode::Require {
            return Err(ConfigError::PasswordWithoutTls(format!("{source:?}")));
        }
        if self.tcp_host().is_none() {
            return Err(ConfigError::NoHost);
        }
        self.password = Some(source);
        Ok(self)
    }

    /// Whether connections are made over TLS only (`sslmode=require` or
    /// stronger).
    pub fn requires_tls(&self) -> bool {
        self.tls.mode == connect::SslMode::Require
    }

    fn tcp_host(&self) -> Option<(&str, u16)> {
        match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => {
                Some((h.as_str(), self.config.get_ports().first().copied().unwrap_or(5432)))
            }
            _ => None,
        }
    }

    /// The cell's schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// `user@host:port/database`, without the password.
    pub fn describe(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!("{}@{host}:{port}/{}", self.config.get_user().unwrap_or("?"), self.config.get_dbname().unwrap_or("?"))
    }

    /// A `psql` command that opens the store (the password from
    /// `PGPASSWORD`, or asked for).
    pub fn psql_command(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "localhost".into(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let user = self.config.get_user().unwrap_or("postgres");
        let password = self
            .config
            .get_password()
            .map(|p| format!("PGPASSWORD={} ", String::from_utf8_lossy(p)))
            .unwrap_or_default();
        let tls = match (&self.tls.mode, &self.tls.root_cert) {
            (connect::SslMode::Require, Some(ca)) => format!("PGSSLMODE=verify-full PGSSLROOTCERT={} ", ca.display()),
            (connect::SslMode::Require, None) => "PGSSLMODE=verify-full PGSSLROOTCERT=system ".to_owned(),
            (connect::SslMode::Disable, _) => "PGSSLMODE=disable ".to_owned(),
            (connect::SslMode::Prefer, _) => String::new(),
        };
        format!(
            "{password}{tls}PGOPTIONS='-c search_path={}' psql -h {host} -p {port} -U {user} -d {}",
            self.schema,
            self.config.get_dbname().unwrap_or("postgres"),
        )
    }

    /// A new connection (TLS as configured, a fresh password from the
    /// [`connect::PasswordSource`] if there is one), its driver task
    /// spawned on the current Tokio runtime, in UTC, without JIT.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, StoreError> {
        let mut config = Cow::Borrowed(&self.config);
        if let (Some(source), Some((host, port))) = (&self.password, self.tcp_host()) {
            let user = self.config.get_user().unwrap_or("postgres");
            let password = source.password(host, port, user).await.map_err(StoreError::password)?;
            config.to_mut().password(password);
        }
        let client = match &self.connector {
            Some(tls) => open(&config, tls.clone()).await?,
            None => open(&config, tokio_postgres::NoTls).await?,
        };
        // UTC, so that minutes and weeks are the same for every client;
        // no JIT, whose compilation costs the panels' small queries more
        // than it saves (PostgreSQL's cost estimates for a partitioned
        // table's window trigger it).
        client.batch_execute("SET TIME ZONE 'UTC'; SET jit = off").await.map_err(|e| StoreError::new("connect", e))?;
        Ok(client)
    }
}

/// A connection made with `tls`, its driver task spawned on the current
/// Tokio runtime.
async fn open<T>(config: &tokio_postgres::Config, tls: T) -> Result<tokio_postgres::Client, StoreError>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = config.connect(tls).await.map_err(|e| StoreError::new("connect", e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

/// What an error means for the caller, from its SQLSTATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The server could not be reached or could not finish now:
    /// connection failures (class 08, or a closed connection or I/O error
    /// without a SQLSTATE), serialization
    /// failures and deadlocks (class 40), too many connections and other
    /// insufficient resources (class 53), shutdown, cancel and other
    /// operator intervention (class 57), system and internal errors
    /// (classes 58, XX). Try again later.
    Unavailable,
    /// The data cannot be stored: data exceptions (class 22) and integrity
    /// constraint violations (class 23). Trying again fails the same way.
    Data,
    /// Anything else (a missing table: migrations not applied; a missing
    /// privilege): the store refuses every row until an operator acts.
    Refused,
}

/// The class of `e`: by SQLSTATE when the server answered; without one,
/// a closed connection or an I/O failure (refused, reset, timed out) is
/// [`ErrorClass::Unavailable`], and anything else (a value the driver
/// could not convert) [`ErrorClass::Refused`].
pub fn classify(e: &tokio_postgres::Error) -> ErrorClass {
    if let Some(code) = e.code() {
        return class_of(code);
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return ErrorClass::Unavailable;
        }
        source = s.source();
    }
    if e.is_closed() { ErrorClass::Unavailable } else { ErrorClass::Refused }
}

fn class_of(code: &SqlState) -> ErrorClass {
    match code.code().get(..2) {
        Some("08" | "40" | "53" | "57" | "58" | "XX") => ErrorClass::Unavailable,
        Some("22" | "23") => ErrorClass::Data,
        _ => ErrorClass::Refused,
    }
}

/// A failed store operation: what was being done, the class, the
/// SQLSTATE when the server answered, and the driver's error.
#[derive(Debug, thiserror::Error)]
#[error("postgres ({step}): {message}")]
pub struct StoreError {
    /// What was being done.
    pub step: &'static str,
    /// What it means.
    pub class: ErrorClass,
    /// The server's SQLSTATE, when it answered.
    pub sqlstate: Option<String>,
    /// The server's message (and detail), or the connection failure.
    pub message: String,
    /// The driver's error, or the password source's.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl StoreError {
    /// `e`, failed while doing `step`.
    pub fn new(step: &'static str, e: tokio_postgres::Error) -> StoreError {
        let (sqlstate, message) = match e.as_db_error() {
            Some(db) => {
                let mut m = format!("{} (SQLSTATE {})", db.message(), db.code().code());
                if let Some(detail) = db.detail() {
                    m.push_str(": ");
                    m.push_str(detail);
                }
                (Some(db.code().code().to_owned()), m)
            }
            None => (None, chain(&e)),
        };
        StoreError { step, class: classify(&e), sqlstate, message, source: Box::new(e) }
    }

    /// An answer the caller could not read (a value of another type than
    /// the statement promises).
    pub fn answer(step: &'static str, e: crate::query::QueryError) -> StoreError {
        StoreError { step, class: ErrorClass::Refused, sqlstate: None, message: e.to_string(), source: Box::new(e) }
    }

    /// A failure of another transport (the Data API): `class` decided by
    /// the caller from the error's type, never its text.
    pub fn other(
        step: &'static str,
        class: ErrorClass,
        message: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    ) -> StoreError {
        StoreError { step, class, sqlstate: None, message, source }
    }

    /// The password source failed (credentials not loaded): the server
    /// was not contacted; try again later.
    pub fn password(e: connect::BoxError) -> StoreError {
        StoreError { step: "password", class: ErrorClass::Unavailable, sqlstate: None, message: chain(&*e), source: e }
    }
}

/// An error and its sources, in one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

impl From<StoreError> for crate::query::QueryError {
    fn from(e: StoreError) -> crate::query::QueryError {
        crate::query::QueryError::Engine {
            engine: ENGINE,
            message: format!("{}: {}", e.step, e.message),
            transient: e.class == ErrorClass::Unavailable,
            source: Box::new(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(Schema::new("bems_prod_eu_1").is_ok());
        for bad in ["", "Bems", "1bems", "bems-x", "a\"; DROP", &"a".repeat(64)] {
            assert!(Schema::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_are_classified_by_sqlstate_class() {
        for (code, class) in [
            (SqlState::CONNECTION_FAILURE, ErrorClass::Unavailable),
            (SqlState::T_R_SERIALIZATION_FAILURE, ErrorClass::Unavailable),
            (SqlState::T_R_DEADLOCK_DETECTED, ErrorClass::Unavailable),
            (SqlState::TOO_MANY_CONNECTIONS, ErrorClass::Unavailable),
            (SqlState::ADMIN_SHUTDOWN, ErrorClass::Unavailable),
            (SqlState::CRASH_SHUTDOWN, ErrorClass::Unavailable),
            (SqlState::CANNOT_CONNECT_NOW, ErrorClass::Unavailable),
            (SqlState::DISK_FULL, ErrorClass::Unavailable),
            (SqlState::CHECK_VIOLATION, ErrorClass::Data),
            (SqlState::NUMERIC_VALUE_OUT_OF_RANGE, ErrorClass::Data),
            (SqlState::UNIQUE_VIOLATION, ErrorClass::Data),
            (SqlState::UNDEFINED_TABLE, ErrorClass::Refused),
            (SqlState::INSUFFICIENT_PRIVILEGE, ErrorClass::Refused),
        ] {
            assert_eq!(class_of(&code), class, "{}", code.code());
        }
    }

    #[test]
    fn the_description_and_psql_command_name_the_server_and_schema() {
        let pg =
            Postgres::new("postgres://bems:secret@127.0.0.1:5499/bems", Schema::new("bems_local").expect("schema"))
                .expect("url");
        assert_eq!(pg.describe(), "bems@127.0.0.1:5499/bems");
        assert!(!format!("{pg:?}").contains("secret"), "{pg:?}");
        assert_eq!(
            pg.psql_command(),
            "PGPASSWORD=secret PGOPTIONS='-c search_path=bems_local' psql -h 127.0.0.1 -p 5499 -U bems -d bems"
        );
        assert!(matches!(Postgres::new("postgres://a:b@h:notaport/x", pg.schema().clone()), Err(ConfigError::Url(_))));
    }
}
