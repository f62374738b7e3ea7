//! Each function's configuration, read from its environment once, at
//! start, into a typed value. An error names the variable and says what
//! is wrong with it.
//!
//! The variable names are the cell's contract
//! ([`bems_core::contract::env`]): the template sets them, these read them.
//!
//! | variable | read by | meaning |
//! |---|---|---|
//! | `BEMS_CELL_ID` | all | the cell |
//! | `BEMS_PARTITIONS` | all | its partition count (1–99) |
//! | `AWS_REGION` | processors, forwarder | the Region (Lambda sets it) |
//! | `BEMS_ACCOUNT_ID` | processors, forwarder | the cell's account (outside Lambda the forwarder defaults to `000000000000`, LocalStack's) |
//! | `BEMS_DLQ_URL` | processors, writers | the dead-letter queue of the function's source queue |
//! | `BEMS_MAX_RECEIVE_COUNT` | processors, writers | the source queue's `maxReceiveCount` (default 5) |
//! | `BEMS_IDEMPOTENCY_TABLE` | processors, optional | the DynamoDB table of the idempotency store; unset or empty for none |
//! | `BEMS_IDEMPOTENCY_TTL_DAYS` | processors | how long its items live (default 35) |
//! | `BEMS_TIMESTREAM_DATABASE`, `BEMS_TIMESTREAM_TABLE` | Timestream writer | where records go |
//! | `BEMS_POSTGRES_URL` | PostgreSQL writer | the server (`postgres://user:password@host:port/database`); the schema is the cell's |
//!
//! Each `from_env` has a `from_lookup` twin taking any name-to-value
//! function, which is how the tests (and a user with another source of
//! configuration) call it.

use std::str::FromStr;
use std::time::Duration;

use bems_core::Stage;
use bems_core::contract::env;
use bems_core::fields::{AccountId, CellId, Region};
use bems_core::partition::PartitionCount;
use bems_core::routing::CellSpec;

/// A variable that is missing or unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {reason}")]
pub struct ConfigError {
    variable: &'static str,
    reason: String,
}

impl ConfigError {
    /// An error about `variable`.
    pub fn new(variable: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError { variable, reason: reason.into() }
    }

    /// The variable at fault.
    pub fn variable(&self) -> &'static str {
        self.variable
    }
}

/// The variables, through a lookup; empty counts as unset.
struct Vars<F>(F);

impl<F: Fn(&str) -> Option<String>> Vars<F> {
    fn optional(&self, name: &'static str) -> Option<String> {
        (self.0)(name).filter(|v| !v.trim().is_empty())
    }

    fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        self.optional(name).ok_or_else(|| ConfigError::new(name, "is not set"))
    }

    fn parsed<T: FromStr>(&self, name: &'static str, default: T, what: &str) -> Result<T, ConfigError> {
        match self.optional(name) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| ConfigError::new(name, format!("{v:?} is not {what}"))),
        }
    }

    fn cell_id(&self) -> Result<CellId, ConfigError> {
        CellId::new(self.required(env::CELL_ID)?).map_err(|e| ConfigError::new(env::CELL_ID, e.to_string()))
    }

    fn max_receive_count(&self) -> Result<u32, ConfigError> {
        let n = self.parsed(env::MAX_RECEIVE_COUNT, 5_u32, "a whole number")?;
        if n == 0 {
            return Err(ConfigError::new(env::MAX_RECEIVE_COUNT, "must be at least 1"));
        }
        Ok(n)
    }

    fn partitions(&self) -> Result<PartitionCount, ConfigError> {
        let text = self.required(env::PARTITIONS)?;
        let n: u32 = text
            .trim()
            .parse()
            .map_err(|_| ConfigError::new(env::PARTITIONS, format!("{text:?} is not a whole number 1-99")))?;
        PartitionCount::new(n).map_err(|e| ConfigError::new(env::PARTITIONS, e.to_string()))
    }

    fn cell(&self, account: Option<&str>) -> Result<CellSpec, ConfigError> {
        let region = self.required(env::REGION)?;
        let region = Region::new(region).map_err(|e| ConfigError::new(env::REGION, e.to_string()))?;
        let account = match account {
            Some(a) => a.to_owned(),
            None => self.required(env::ACCOUNT_ID)?,
        };
        let account = AccountId::new(account).map_err(|e| ConfigError::new(env::ACCOUNT_ID, e.to_string()))?;
        CellSpec::new(self.cell_id()?, region, account, self.partitions()?)
            .map_err(|e| ConfigError::new(env::CELL_ID, e.to_string()))
    }
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A stage processor's configuration.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StageConfig {
    /// The stage it processes.
    pub stage: Stage,
    /// Its cell.
    pub cell: CellSpec,
    /// The dead-letter queue of its stage queue.
    pub dlq_url: String,
    /// The stage queue's `maxReceiveCount`.
    pub max_receive_count: u32,
    /// The durable idempotency store, if any.
    pub idempotency: Option<IdempotencyConfig>,
}

/// Where the stage processors remember the next events they published.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IdempotencyConfig {
    /// The DynamoDB table.
    pub table: String,
    /// How long an item lives.
    pub ttl: Duration,
}

impl StageConfig {
    /// From the process environment.
    pub fn from_env(stage: Stage) -> Result<StageConfig, ConfigError> {
        StageConfig::from_lookup(stage, process_env)
    }

    /// From `lookup` (a variable's value by name).
    pub fn from_lookup(stage: Stage, lookup: impl Fn(&str) -> Option<String>) -> Result<StageConfig, ConfigError> {
        let vars = Vars(lookup);
        let max_receive_count = vars.max_receive_count()?;
        let idempotency = match vars.optional(env::IDEMPOTENCY_TABLE) {
            None => None,
            Some(table) => {
                let days = vars.parsed(env::IDEMPOTENCY_TTL_DAYS, 35_u64, "a whole number of days")?;
                if days == 0 {
                    return Err(ConfigError::new(env::IDEMPOTENCY_TTL_DAYS, "must be at least 1"));
                }
                Some(IdempotencyConfig { table, ttl: Duration::from_secs(days.saturating_mul(86_400)) })
            }
        };
        Ok(StageConfig {
            stage,
            cell: vars.cell(None)?,
            dlq_url: vars.required(env::DLQ_URL)?,
            max_receive_count,
            idempotency,
        })
    }
}

/// The route forwarder's configuration.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ForwarderConfig {
    /// Its cell.
    pub cell: CellSpec,
}

/// LocalStack's account, the forwarder's default outside Lambda.
const EMULATOR_ACCOUNT: &str = "000000000000";

impl ForwarderConfig {
    /// From the process environment. Outside Lambda (`in_lambda` false) a
    /// missing `BEMS_ACCOUNT_ID` means the emulators' account.
    pub fn from_env(in_lambda: bool) -> Result<ForwarderConfig, ConfigError> {
        ForwarderConfig::from_lookup(in_lambda, process_env)
    }

    /// From `lookup`.
    pub fn from_lookup(
        in_lambda: bool,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<ForwarderConfig, ConfigError> {
        let vars = Vars(lookup);
        let account = vars.optional(env::ACCOUNT_ID);
        let account = match (&account, in_lambda) {
            (Some(a), _) => Some(a.as_str()),
            (None, false) => Some(EMULATOR_ACCOUNT),
            (None, true) => None,
        };
        Ok(ForwarderConfig { cell: vars.cell(account)? })
    }
}

/// What every status writer needs, whatever its store.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WriterConfig {
    /// The cell.
    pub cell_id: CellId,
    /// Its partition count: an event of another partition is refused.
    pub partitions: PartitionCount,
    /// The status queue's dead-letter queue.
    pub dlq_url: String,
    /// The status queue's `maxReceiveCount`: on that receive a record the
    /// store cannot take goes to the dead-letter queue ("store unavailable").
    pub max_receive_count: u32,
}

impl WriterConfig {
    /// From the process environment.
    pub fn from_env() -> Result<WriterConfig, ConfigError> {
        WriterConfig::from_lookup(process_env)
    }

    /// From `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<WriterConfig, ConfigError> {
        let vars = Vars(lookup);
        Ok(WriterConfig {
            cell_id: vars.cell_id()?,
            partitions: vars.partitions()?,
            dlq_url: vars.required(env::DLQ_URL)?,
            max_receive_count: vars.max_receive_count()?,
        })
    }
}

/// The PostgreSQL writer's configuration.
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// The writer's.
    pub writer: WriterConfig,
    /// The store: the server from `BEMS_POSTGRES_URL` (its password never
    /// printed) and the cell's schema.
    pub postgres: bems_store::postgres::Postgres,
    /// How it logs in (`BEMS_POSTGRES_AUTH`).
    pub auth: PostgresAuth,
}

/// How the PostgreSQL writer logs in.
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostgresAuth {
    /// The connection string's password.
    Password,
    /// An RDS IAM token per connection, signed with the function's role
    /// (`bems_store::postgres::iam`).
    Iam,
}

#[cfg(feature = "postgres")]
impl PostgresConfig {
    /// From the process environment.
    pub fn from_env() -> Result<PostgresConfig, ConfigError> {
        PostgresConfig::from_lookup(process_env)
    }

    /// From `lookup`. The connection string must parse; the server is not
    /// contacted.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<PostgresConfig, ConfigError> {
        let vars = Vars(&lookup);
        let writer = WriterConfig::from_lookup(&lookup)?;
        let url = vars.required(env::POSTGRES_URL)?;
        let schema = bems_store::postgres::Schema::of_cell(&writer.cell_id);
        let postgres = bems_store::postgres::Postgres::new(&url, schema)
            .map_err(|e| ConfigError::new(env::POSTGRES_URL, e.to_string()))?;
        let auth = match vars.optional(env::POSTGRES_AUTH).as_deref() {
            None | Some("password") => PostgresAuth::Password,
            Some("iam") => PostgresAuth::Iam,
            Some(other) => {
                return Err(ConfigError::new(env::POSTGRES_AUTH, format!("is {other:?}, not password or iam")));
            }
        };
        if auth == PostgresAuth::Iam && !postgres.requires_tls() {
            return Err(ConfigError::new(
                env::POSTGRES_URL,
                "must set sslmode=verify-full (and sslrootcert) with BEMS_POSTGRES_AUTH=iam: a token is sent only over TLS",
            ));
        }
        Ok(PostgresConfig { writer, postgres, auth })
    }
}

/// The Timestream writer's configuration.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TimestreamConfig {
    /// The writer's.
    pub writer: WriterConfig,
    /// The database.
    pub database: String,
    /// The table.
    pub table: String,
}

impl TimestreamConfig {
    /// From the process environment.
    pub fn from_env() -> Result<TimestreamConfig, ConfigError> {
        TimestreamConfig::from_lookup(process_env)
    }

    /// From `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<TimestreamConfig, ConfigError> {
        let vars = Vars(&lookup);
        Ok(TimestreamConfig {
            writer: WriterConfig::from_lookup(&lookup)?,
            database: vars.required(env::TIMESTREAM_DATABASE)?,
            table: vars.required(env::TIMESTREAM_TABLE)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn stage_vars() -> HashMap<&'static str, &'static str> {
        HashMap::from([
            (env::CELL_ID, "prod-eu-1"),
            (env::PARTITIONS, "16"),
            (env::REGION, "eu-west-1"),
            (env::ACCOUNT_ID, "123456789012"),
            (env::DLQ_URL, "https://sqs.eu-west-1.amazonaws.com/123456789012/bems-prod-eu-1-ingestion-dlq.fifo"),
        ])
    }

    fn lookup<'v>(vars: &'v HashMap<&'static str, &'static str>) -> impl Fn(&str) -> Option<String> + 'v {
        |name| vars.get(name).map(|v| (*v).to_owned())
    }

    #[test]
    fn a_complete_stage_environment_reads_with_its_defaults() {
        let config = StageConfig::from_lookup(Stage::Ingestion, lookup(&stage_vars())).expect("config");
        assert_eq!(config.cell.cell_id().as_str(), "prod-eu-1");
        assert_eq!(config.cell.partitions().get(), 16);
        assert_eq!(config.max_receive_count, 5);
        assert_eq!(config.idempotency, None);
        let mut vars = stage_vars();
        vars.insert(env::IDEMPOTENCY_TABLE, "bems-prod-eu-1-idempotency");
        vars.insert(env::IDEMPOTENCY_TTL_DAYS, "7");
        let config = StageConfig::from_lookup(Stage::Ingestion, lookup(&vars)).expect("config");
        let store = config.idempotency.expect("a store");
        assert_eq!((store.table.as_str(), store.ttl), ("bems-prod-eu-1-idempotency", Duration::from_secs(7 * 86_400)));
    }

    #[test]
    fn each_missing_stage_variable_is_named() {
        for missing in [env::CELL_ID, env::PARTITIONS, env::REGION, env::ACCOUNT_ID, env::DLQ_URL] {
            let mut vars = stage_vars();
            vars.remove(missing);
            let error = StageConfig::from_lookup(Stage::Posting, lookup(&vars)).expect_err(missing);
            assert_eq!(error.variable(), missing);
            assert_eq!(error.to_string(), format!("{missing}: is not set"));
            // Set but empty is the same as missing.
            vars.insert(missing, " ");
            assert_eq!(StageConfig::from_lookup(Stage::Posting, lookup(&vars)).expect_err(missing).variable(), missing);
        }
    }

    #[test]
    fn each_bad_stage_variable_is_named_with_the_reason() {
        let cases = [
            (env::CELL_ID, "Prod EU", "lowercase"),
            (env::PARTITIONS, "sixteen", "not a whole number"),
            (env::PARTITIONS, "100", "99"),
            (env::PARTITIONS, "0", ""),
            (env::REGION, "europe", ""),
            (env::ACCOUNT_ID, "12345", ""),
            (env::MAX_RECEIVE_COUNT, "five", "not a whole number"),
            (env::MAX_RECEIVE_COUNT, "0", "at least 1"),
        ];
        for (variable, value, says) in cases {
            let mut vars = stage_vars();
            vars.insert(variable, value);
            let error = StageConfig::from_lookup(Stage::Posting, lookup(&vars)).expect_err(value);
            assert_eq!(error.variable(), variable, "{value}: {error}");
            assert!(error.to_string().contains(says), "{variable}={value}: {error}");
        }
        let mut vars = stage_vars();
        vars.insert(env::IDEMPOTENCY_TABLE, "t");
        vars.insert(env::IDEMPOTENCY_TTL_DAYS, "a month");
        let error = StageConfig::from_lookup(Stage::Posting, lookup(&vars)).expect_err("ttl");
        assert_eq!(error.variable(), env::IDEMPOTENCY_TTL_DAYS);
    }

    #[test]
    fn the_forwarder_needs_an_account_only_in_lambda() {
        let mut vars = stage_vars();
        vars.remove(env::ACCOUNT_ID);
        vars.remove(env::DLQ_URL);
        let local = ForwarderConfig::from_lookup(false, lookup(&vars)).expect("local");
        assert_eq!(local.cell.account_id().as_str(), EMULATOR_ACCOUNT);
        assert_eq!(ForwarderConfig::from_lookup(true, lookup(&vars)).expect_err("lambda").variable(), env::ACCOUNT_ID);
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn the_postgres_writer_names_its_missing_or_unusable_variables() {
        let mut vars = stage_vars();
        assert_eq!(PostgresConfig::from_lookup(lookup(&vars)).expect_err("no url").variable(), env::POSTGRES_URL);
        vars.insert(env::POSTGRES_URL, "postgres://bems@db:not-a-port/bems");
        let error = PostgresConfig::from_lookup(lookup(&vars)).expect_err("bad url");
        assert_eq!(error.variable(), env::POSTGRES_URL);
        assert!(!error.to_string().is_empty());
        vars.insert(env::POSTGRES_URL, "postgres://bems:secret@db.internal:5432/bems");
        let config = PostgresConfig::from_lookup(lookup(&vars)).expect("config");
        assert_eq!((config.writer.max_receive_count, config.writer.partitions.get()), (5, 16));
        assert_eq!(config.postgres.schema().as_str(), "bems_prod_eu_1");
        assert!(!format!("{config:?}").contains("secret"), "the password stays out of logs");
        assert_eq!(config.auth, PostgresAuth::Password);
        vars.insert(env::POSTGRES_AUTH, "kerberos");
        assert_eq!(PostgresConfig::from_lookup(lookup(&vars)).expect_err("auth").variable(), env::POSTGRES_AUTH);
        vars.insert(env::POSTGRES_AUTH, "iam");
        let error = PostgresConfig::from_lookup(lookup(&vars)).expect_err("iam without tls");
        assert_eq!(error.variable(), env::POSTGRES_URL);
        assert!(error.to_string().contains("sslmode=verify-full"), "{error}");
        vars.insert(env::POSTGRES_URL, "postgres://bems_writer@db.internal:5432/bems?sslmode=verify-full");
        assert_eq!(PostgresConfig::from_lookup(lookup(&vars)).expect("iam").auth, PostgresAuth::Iam);
        vars.insert(env::MAX_RECEIVE_COUNT, "0");
        assert_eq!(PostgresConfig::from_lookup(lookup(&vars)).expect_err("zero").variable(), env::MAX_RECEIVE_COUNT);
    }

    #[test]
    fn the_timestream_writer_names_its_missing_table() {
        let mut vars = stage_vars();
        vars.insert(env::TIMESTREAM_DATABASE, "bems_prod_eu_1");
        let error = TimestreamConfig::from_lookup(lookup(&vars)).expect_err("no table");
        assert_eq!(error.variable(), env::TIMESTREAM_TABLE);
        vars.insert(env::TIMESTREAM_TABLE, "status_changes");
        let config = TimestreamConfig::from_lookup(lookup(&vars)).expect("config");
        assert_eq!(config.writer.partitions.get(), 16);
        vars.remove(env::DLQ_URL);
        assert_eq!(TimestreamConfig::from_lookup(lookup(&vars)).expect_err("no dlq").variable(), env::DLQ_URL);
    }
}
