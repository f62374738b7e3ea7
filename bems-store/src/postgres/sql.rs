//! SQL as both transports run it: a PostgreSQL connection, and the RDS
//! Data API (`crate::postgres::data_api`, feature `data-api`).
//!
//! The query layer, the migrations, the partitions and the roles build
//! each statement once, with `$1`-style parameters, and bind [`Param`]s;
//! answers come back as [`Row`]s that the callers read by type. Over a
//! connection a statement runs as written. Over the Data API its
//! parameters become named ones ([`named_placeholders`]: `$1` → `:p1`) and
//! a script of several statements is sent one statement at a time
//! ([`split_statements`]). Arrays travel as text and are cast in the
//! statement (`$3::text::int8[]`, [`array_literal`]), because the Data API
//! takes no array parameters; so the SQL is the same on both.

use std::fmt::Display;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use tokio_postgres::types::{ToSql, Type};

use super::{ENGINE, StoreError};
use crate::query::QueryError;

/// Where statements run: a connection ([`super::PgQueries`]) or the Data
/// API.
pub trait Executor: Send + Sync {
    /// The rows `sql` answers with `params`; `query` names it in errors.
    fn rows(
        &self,
        query: &'static str,
        sql: &str,
        params: &[Param],
    ) -> impl Future<Output = Result<Vec<Row>, QueryError>> + Send;
}

/// A statement's parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    /// `text` (and anything cast from text in the statement).
    Text(String),
    /// `int8`.
    Int(i64),
    /// `float8`.
    Float(f64),
    /// `timestamptz`.
    Time(DateTime<Utc>),
}

/// Where a transaction runs: a connection, or the Data API.
pub trait Transactional: Send {
    /// Its transaction.
    type Tx<'a>: Transaction
    where
        Self: 'a;

    /// Begins one; `step` names it in errors.
    fn begin(&mut self, step: &'static str) -> impl Future<Output = Result<Self::Tx<'_>, StoreError>> + Send;
}

/// An open transaction: dropped without [`Transaction::commit`], it is
/// rolled back.
pub trait Transaction: Send + Sync {
    /// The rows `sql` answers with `params`.
    fn rows(
        &self,
        step: &'static str,
        sql: &str,
        params: &[Param],
    ) -> impl Future<Output = Result<Vec<Row>, StoreError>> + Send;

    /// Runs `sql` with `params`; the rows it changed.
    fn execute(
        &self,
        step: &'static str,
        sql: &str,
        params: &[Param],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Runs a script of statements without parameters, in order.
    fn script(&self, step: &'static str, sql: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Commits.
    fn commit(self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Rolls back now, rather than when dropped (which, for the Data API,
    /// is a request nobody waits for).
    fn rollback(self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Rows to fetch from a cursor at a time: as many as fit the
    /// transport's answer.
    fn fetch_rows(&self) -> u32 {
        5_000
    }
}

impl Transactional for tokio_postgres::Client {
    type Tx<'a> = tokio_postgres::Transaction<'a>;

    async fn begin(&mut self, step: &'static str) -> Result<tokio_postgres::Transaction<'_>, StoreError> {
        self.transaction().await.map_err(|e| StoreError::new(step, e))
    }
}

/// Whether `schema`'s `table` exists, in `tx`.
pub(crate) async fn table_exists(
    tx: &impl Transaction,
    step: &'static str,
    schema: &super::Schema,
    table: &str,
) -> Result<bool, StoreError> {
    tx.rows(step, "SELECT to_regclass($1) IS NOT NULL", &[Param::Text(schema.table(table))])
        .await?
        .first()
        .map(|r| r.boolean(0))
        .transpose()
        .map_err(|e| StoreError::answer(step, e))
        .map(|exists| exists.unwrap_or(false))
}

/// The single `int8` that `sql` answers (a count); no row is an error,
/// never a zero.
pub(crate) async fn single_int(
    tx: &impl Transaction,
    step: &'static str,
    sql: &str,
    params: &[Param],
) -> Result<i64, StoreError> {
    let rows = tx.rows(step, sql, params).await?;
    rows.first().ok_or_else(|| no_row(step)).and_then(|row| row.int(0).map_err(|e| StoreError::answer(step, e)))
}

/// The single `timestamptz` that `sql` answers; no row is an error.
pub(crate) async fn single_time(
    tx: &impl Transaction,
    step: &'static str,
    sql: &str,
) -> Result<DateTime<Utc>, StoreError> {
    let rows = tx.rows(step, sql, &[]).await?;
    rows.first().ok_or_else(|| no_row(step)).and_then(|row| row.time(0).map_err(|e| StoreError::answer(step, e)))
}

fn no_row(step: &'static str) -> StoreError {
    StoreError::answer(
        step,
        QueryError::BadValue { engine: ENGINE, query: step, column: "0", value: "no row".to_owned() },
    )
}

/// `params` as `tokio-postgres` binds them.
pub(crate) fn bound(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(Param::as_sql).collect()
}

impl Transaction for tokio_postgres::Transaction<'_> {
    async fn rows(&self, step: &'static str, sql: &str, params: &[Param]) -> Result<Vec<Row>, StoreError> {
        let rows = self.query(sql, &bound(params)).await.map_err(|e| StoreError::new(step, e))?;
        rows.iter().map(|r| from_pg(step, r).map_err(|e| StoreError::answer(step, e))).collect()
    }

    async fn execute(&self, step: &'static str, sql: &str, params: &[Param]) -> Result<u64, StoreError> {
        tokio_postgres::Transaction::execute(self, sql, &bound(params)).await.map_err(|e| StoreError::new(step, e))
    }

    async fn script(&self, step: &'static str, sql: &str) -> Result<(), StoreError> {
        self.batch_execute(sql).await.map_err(|e| StoreError::new(step, e))
    }

    async fn commit(self) -> Result<(), StoreError> {
        tokio_postgres::Transaction::commit(self).await.map_err(|e| StoreError::new("commit", e))
    }

    async fn rollback(self) -> Result<(), StoreError> {
        tokio_postgres::Transaction::rollback(self).await.map_err(|e| StoreError::new("rollback", e))
    }
}

impl Param {
    /// The value for `tokio-postgres`.
    pub fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Param::Text(v) => v,
            Param::Int(v) => v,
            Param::Float(v) => v,
            Param::Time(v) => v,
        }
    }
}

/// One value of an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// SQL `NULL`.
    Null,
    /// `bool`.
    Bool(bool),
    /// `int2`, `int4`, `int8`.
    Int(i64),
    /// `float4`, `float8`.
    Float(f64),
    /// `numeric`.
    Decimal(Decimal),
    /// `text`, `varchar`, `uuid` (its text form).
    Text(String),
    /// `timestamptz`.
    Time(DateTime<Utc>),
    /// `date`.
    Date(NaiveDate),
}

/// One row of an answer, read by column index and type; a value of
/// another type than asked, or `NULL` where a value is needed, is a
/// [`QueryError::BadValue`] naming the query and the column.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    query: &'static str,
    cells: Vec<Cell>,
}

macro_rules! getters {
    ($( $name:ident, $opt:ident, $variant:ident, $ty:ty );* $(;)?) => {
        $(
            #[doc = concat!("Column `i` as `", stringify!($ty), "`.")]
            pub fn $name(&self, i: usize) -> Result<$ty, QueryError> {
                self.$opt(i)?.ok_or_else(|| self.bad(i, "NULL"))
            }

            #[doc = concat!("Column `i` as `", stringify!($ty), "`, or `None` for `NULL`.")]
            pub fn $opt(&self, i: usize) -> Result<Option<$ty>, QueryError> {
                match self.cells.get(i) {
                    Some(Cell::$variant(v)) => Ok(Some(v.clone())),
                    Some(Cell::Null) => Ok(None),
                    Some(other) => Err(self.bad(i, &format!("{other:?}"))),
                    None => Err(QueryError::MissingColumn { engine: ENGINE, query: self.query, column: "(past the last)" }),
                }
            }
        )*
    };
}

impl Row {
    /// A row of `query`'s answer.
    pub fn new(query: &'static str, cells: Vec<Cell>) -> Row {
        Row { query, cells }
    }

    /// Its values.
    pub fn cells(&self) -> &[Cell] {
        &self.cells
    }

    fn bad(&self, i: usize, value: &str) -> QueryError {
        QueryError::BadValue { engine: ENGINE, query: self.query, column: column_name(i), value: value.to_owned() }
    }

    getters! {
        text, opt_text, Text, String;
        int, opt_int, Int, i64;
        float, opt_float, Float, f64;
        decimal, opt_decimal, Decimal, Decimal;
        time, opt_time, Time, DateTime<Utc>;
        date, opt_date, Date, NaiveDate;
        boolean, opt_boolean, Bool, bool;
    }
}

/// `row` of a connection's answer to `query`, as [`Cell`]s by each
/// column's type.
pub fn from_pg(query: &'static str, row: &tokio_postgres::Row) -> Result<Row, QueryError> {
    let mut cells = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let t = column.type_();
        let failed = |e: tokio_postgres::Error| QueryError::from(StoreError::new(query, e));
        let cell = if *t == Type::BOOL {
            row.try_get::<_, Option<bool>>(i).map_err(failed)?.map(Cell::Bool)
        } else if *t == Type::INT2 {
            row.try_get::<_, Option<i16>>(i).map_err(failed)?.map(|v| Cell::Int(v.into()))
        } else if *t == Type::INT4 {
            row.try_get::<_, Option<i32>>(i).map_err(failed)?.map(|v| Cell::Int(v.into()))
        } else if *t == Type::INT8 {
            row.try_get::<_, Option<i64>>(i).map_err(failed)?.map(Cell::Int)
        } else if *t == Type::FLOAT4 {
            row.try_get::<_, Option<f32>>(i).map_err(failed)?.map(|v| Cell::Float(v.into()))
        } else if *t == Type::FLOAT8 {
            row.try_get::<_, Option<f64>>(i).map_err(failed)?.map(Cell::Float)
        } else if *t == Type::NUMERIC {
            row.try_get::<_, Option<Decimal>>(i).map_err(failed)?.map(Cell::Decimal)
        } else if *t == Type::TIMESTAMPTZ {
            row.try_get::<_, Option<DateTime<Utc>>>(i).map_err(failed)?.map(Cell::Time)
        } else if *t == Type::DATE {
            row.try_get::<_, Option<NaiveDate>>(i).map_err(failed)?.map(Cell::Date)
        } else if *t == Type::UUID {
            row.try_get::<_, Option<uuid::Uuid>>(i).map_err(failed)?.map(|v| Cell::Text(v.to_string()))
        } else if [Type::TEXT, Type::VARCHAR, Type::NAME, Type::BPCHAR].contains(t) {
            row.try_get::<_, Option<String>>(i).map_err(failed)?.map(Cell::Text)
        } else {
            return Err(QueryError::BadValue {
                engine: ENGINE,
                query,
                column: column_name(i),
                value: format!("a value of type {t}"),
            });
        };
        cells.push(cell.unwrap_or(Cell::Null));
    }
    Ok(Row::new(query, cells))
}

/// A column's name in errors: its index (the answers' columns are
/// positional).
fn column_name(i: usize) -> &'static str {
    const NAMES: [&str; 16] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15"];
    NAMES.get(i).copied().unwrap_or("16 or later")
}

/// `items` as a PostgreSQL array literal (`{"a","b"}`), each element
/// quoted, for a parameter cast in the statement (`$1::text::text[]`).
pub fn array_literal<T: Display>(items: &[T]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|item| format!("\"{}\"", item.to_string().replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("{{{}}}", quoted.join(","))
}

/// `sql` with its `$1`-style placeholders as the Data API's named ones
/// (`:p1`), outside quotes, quoted identifiers, comments and dollar-quoted
/// bodies.
pub fn named_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    scan(sql, |piece| match piece {
        Piece::Code(code) => {
            let mut chars = code.char_indices().peekable();
            while let Some((_, c)) = chars.next() {
                if c == '$' && chars.peek().is_some_and(|(_, d)| d.is_ascii_digit()) {
                    out.push_str(":p");
                    while let Some((_, d)) = chars.peek().copied().filter(|(_, d)| d.is_ascii_digit()) {
                        out.push(d);
                        chars.next();
                    }
                } else {
                    out.push(c);
                }
            }
        }
        Piece::Other(text) | Piece::End(text) => out.push_str(text),
    });
    out
}

/// The statements of a script, split at the semicolons outside quotes,
/// quoted identifiers, comments and dollar-quoted bodies; empty ones
/// (comments only) left out.
pub fn split_statements(script: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut code_seen = false;
    scan(script, |piece| match piece {
        Piece::Code(code) => {
            for c in code.chars() {
                if c == ';' {
                    if code_seen {
                        statements.push(std::mem::take(&mut current).trim().to_owned());
                    }
                    current.clear();
                    code_seen = false;
                } else {
                    code_seen |= !c.is_whitespace();
                    current.push(c);
                }
            }
        }
        Piece::Other(text) => {
            // A comment alone does not make a statement; a string does.
            code_seen |= !text.starts_with("--") && !text.starts_with("/*");
            current.push_str(text);
        }
        Piece::End(text) => current.push_str(text),
    });
    if code_seen {
        statements.push(current.trim().to_owned());
    }
    statements
}

/// A stretch of SQL text.
enum Piece<'a> {
    /// Outside any literal or comment.
    Code(&'a str),
    /// A string, quoted identifier, comment or dollar-quoted body, whole.
    Other(&'a str),
    /// An unterminated literal or comment at the end.
    End(&'a str),
}

/// Cuts `sql` into [`Piece`]s, in order.
fn scan<'a>(sql: &'a str, mut each: impl FnMut(Piece<'a>)) {
    let bytes = sql.as_bytes();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        let end = match bytes[i] {
            b'\'' | b'"' => closing(sql, i + 1, &sql[i..=i]).map(|e| e + 1),
            b'-' if bytes.get(i + 1) == Some(&b'-') => Some(sql[i..].find('\n').map_or(sql.len(), |n| i + n)),
            b'/' if bytes.get(i + 1) == Some(&b'*') => closing(sql, i + 2, "*/").map(|e| e + 2),
            b'$' => match dollar_tag(&sql[i..]) {
                Some(tag) => closing(sql, i + tag.len(), tag).map(|e| e + tag.len()),
                None => {
                    i += 1;
                    continue;
                }
            },
            _ => {
                i += 1;
                continue;
            }
        };
        if start < i {
            each(Piece::Code(&sql[start..i]));
        }
        match end {
            Some(end) => {
                each(Piece::Other(&sql[i..end]));
                (start, i) = (end, end);
            }
            None => {
                each(Piece::End(&sql[i..]));
                return;
            }
        }
    }
    if start < sql.len() {
        each(Piece::Code(&sql[start..]));
    }
}

/// Where `close` next starts in `sql` from `from` (a doubled quote inside
/// a string or identifier is part of it).
fn closing(sql: &str, from: usize, close: &str) -> Option<usize> {
    let mut at = from;
    loop {
        let found = at + sql.get(at..)?.find(close)?;
        let doubled = (close == "'" || close == "\"") && sql[found + 1..].starts_with(close);
        if !doubled {
            return Some(found);
        }
        at = found + 2;
    }
}

/// The dollar-quote tag (`$$`, `$body$`) at the start of `text`, if one is.
fn dollar_tag(text: &str) -> Option<&str> {
    let rest = &text[1..];
    let len = rest.find('$')?;
    let tag = &rest[..len];
    let ok = tag.chars().enumerate().all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
    ok.then(|| &text[..len + 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_named_outside_literals() {
        assert_eq!(
            named_placeholders("SELECT a FROM t WHERE x >= $1::timestamptz AND y = $12 AND z = '$1' AND \"$2\" = 1"),
            "SELECT a FROM t WHERE x >= :p1::timestamptz AND y = :p12 AND z = '$1' AND \"$2\" = 1"
        );
        assert_eq!(
            named_placeholders("SELECT $$ $1 $$, $body$ $2 $body$ -- $3\n, $4"),
            "SELECT $$ $1 $$, $body$ $2 $body$ -- $3\n, :p4"
        );
        assert_eq!(named_placeholders("SELECT 'it''s $1', $1"), "SELECT 'it''s $1', :p1");
    }

    #[test]
    fn scripts_split_at_semicolons_outside_literals_and_comments() {
        let script = "-- a comment; still one\nCREATE TABLE a (x text DEFAULT ';');\n\
                      /* block; */ CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$;\n\
                      -- trailing comment only\n";
        let statements = split_statements(script);
        assert_eq!(statements.len(), 2, "{statements:#?}");
        assert!(statements[0].ends_with("CREATE TABLE a (x text DEFAULT ';')"), "{}", statements[0]);
        assert!(statements[1].ends_with("AS $$ SELECT 1; $$"), "{}", statements[1]);
        assert_eq!(split_statements("SELECT 1"), ["SELECT 1"]);
        // The committed migrations split into their statements.
        for m in super::super::migrate::MIGRATIONS {
            let parts = split_statements(m.sql);
            let least = if m.version == 1 { 10 } else { 1 };
            assert!(parts.len() >= least, "{}: {}", m.name, parts.len());
            assert!(parts.iter().all(|p| !p.trim().is_empty() && !p.trim_end().ends_with(';')));
        }
    }

    #[test]
    fn arrays_travel_as_quoted_text() {
        assert_eq!(array_literal(&["EUR", "a\"b", "c\\d"]), r#"{"EUR","a\"b","c\\d"}"#);
        assert_eq!(array_literal(&[1_i64, 250]), r#"{"1","250"}"#);
        assert_eq!(array_literal::<i64>(&[]), "{}");
    }

    #[test]
    fn a_value_of_another_type_or_null_is_named() {
        let row = Row::new("history", vec![Cell::Text("a".into()), Cell::Null, Cell::Int(3)]);
        assert_eq!(row.text(0).expect("text"), "a");
        assert_eq!(row.opt_text(1).expect("null"), None);
        assert!(matches!(row.text(1), Err(QueryError::BadValue { column: "1", .. })));
        assert!(matches!(row.text(2), Err(QueryError::BadValue { column: "2", .. })));
        assert_eq!(row.int(2).expect("int"), 3);
        assert!(matches!(row.int(7), Err(QueryError::MissingColumn { .. })));
    }
}
