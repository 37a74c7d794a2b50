//! Database table sinks: PostgreSQL and MySQL/MariaDB through sqlx.
//!
//! Workers turn each record into a row ([`TableLayout::row`]: the value's JSON fields fill the
//! columns; a tombstone becomes a delete by key) and hand it to the sink's writer thread over a
//! bounded channel. The writer batches rows (`batch-size`, `linger-ms`), writes a batch in one
//! transaction (multi-row `INSERT`, `ON CONFLICT .. DO UPDATE` / `ON DUPLICATE KEY UPDATE` for
//! upserts, `DELETE .. WHERE key IN (..)` for tombstones, in record order), and only after the
//! commit acknowledges the rows' units in the offset tracker.
//!
//! Transient errors (connection lost, deadlock, serialization failure, server shutting down)
//! are retried with backoff for as long as it takes: meanwhile the channel fills, the workers
//! block, their partitions reach `partition-capacity` and are paused, and nothing is committed
//! past the unwritten rows. A batch the database rejects for good is split into single rows so
//! the error policy (`error-policy.sink-rejection`) applies to the rejected record only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::Histogram;
use serde_json::Value;
use sluice_plugin_api::abi::{Header, Record};
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::types::Json;
use sqlx::{MySql, Postgres, QueryBuilder};

use crate::config::{Action, ClassPolicy, ColumnType, TableMode, TableOutputSpec};
use crate::dead_letter::{DeadLetters, Failure};
use crate::error_policy::{self, Attempt, Class, Verdict};
use crate::fatal::Fatal;
use crate::offsets::{OffsetTracker, TopicPartition};
use crate::sink::SinkError;
use crate::sink::kafka::Ack;
use crate::sync::lock;
use crate::telemetry::{
    EventDeadLettered, EventSkipped, Failed, SinkRecovered, SinkRejected, SinkUnavailable,
    Telemetry,
};

/// Which SQL dialect a table speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB.
    Mysql,
}

/// One typed value, NULL included (a NULL keeps its column's type, as PostgreSQL requires).
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// `text`.
    Text(Option<String>),
    /// `bigint`.
    Bigint(Option<i64>),
    /// `integer`.
    Integer(Option<i32>),
    /// `double precision`.
    Double(Option<f64>),
    /// `boolean`.
    Boolean(Option<bool>),
    /// `jsonb` / `json`.
    Json(Option<Value>),
}

/// What one record does to the table.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Insert (or upsert) a row: every column, in the layout's order.
    Write(Vec<Cell>),
    /// Delete the row with these key values (the layout's key columns, in order).
    Delete(Vec<Cell>),
}

/// A table's columns and how records map onto them.
#[derive(Debug, Clone)]
pub struct TableLayout {
    dialect: Dialect,
    table: String,
    columns: Vec<(String, ColumnType)>,
    /// Indices of the key columns in `columns`.
    key: Vec<usize>,
    mode: TableMode,
    /// Most rows per statement.
    batch_size: usize,
}

fn convert(field: &str, ty: ColumnType, value: Option<&Value>) -> Result<Cell, String> {
    let value = value.filter(|v| !v.is_null());
    let bad = |what: &str| format!("field `{field}`: expected {what}, got {}", value.unwrap());
    Ok(match ty {
        ColumnType::Text => Cell::Text(value.map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })),
        ColumnType::Bigint => Cell::Bigint(match value {
            None => None,
            Some(Value::Number(n)) => Some(n.as_i64().ok_or_else(|| bad("an integer"))?),
            Some(Value::String(s)) => Some(s.trim().parse().map_err(|_| bad("an integer"))?),
            Some(_) => return Err(bad("an integer")),
        }),
        ColumnType::Integer => Cell::Integer(match value {
            None => None,
            Some(Value::Number(n)) => Some(
                n.as_i64()
                    .and_then(|n| i32::try_from(n).ok())
                    .ok_or_else(|| bad("a 32-bit integer"))?,
            ),
            Some(Value::String(s)) => Some(s.trim().parse().map_err(|_| bad("a 32-bit integer"))?),
            Some(_) => return Err(bad("a 32-bit integer")),
        }),
        ColumnType::Double => Cell::Double(match value {
            None => None,
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(s)) => Some(s.trim().parse().map_err(|_| bad("a number"))?),
            Some(_) => return Err(bad("a number")),
        }),
        ColumnType::Boolean => Cell::Boolean(match value {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(Value::String(s)) if s == "true" || s == "false" => Some(s == "true"),
            Some(_) => return Err(bad("true or false")),
        }),
        ColumnType::Json => Cell::Json(value.cloned()),
    })
}

impl TableLayout {
    /// The layout of a (checked) table output.
    pub fn new(dialect: Dialect, spec: &TableOutputSpec) -> Self {
        let columns: Vec<(String, ColumnType)> = spec
            .columns
            .iter()
            .map(|(name, ty)| (name.clone(), *ty))
            .collect();
        let key = spec
            .key
            .iter()
            .filter_map(|k| columns.iter().position(|(c, _)| c == k))
            .collect();
        TableLayout {
            dialect,
            table: spec.table.clone(),
            columns,
            key,
            mode: spec.mode,
            batch_size: spec.batch_size,
        }
    }

    /// The table name, for messages.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// What `record` does to the table. A tombstone (null value) deletes by the record key.
    pub fn row(&self, record: &Record<'_>) -> Result<Op, String> {
        let Some(value) = record.value_bytes() else {
            return self.delete(record.key_bytes());
        };
        let value: Value = serde_json::from_slice(value)
            .map_err(|e| format!("the record value is not JSON ({e}): emit a JSON object"))?;
        let Value::Object(fields) = value else {
            return Err("the record value is not a JSON object".into());
        };
        let cells = self
            .columns
            .iter()
            .map(|(name, ty)| convert(name, *ty, fields.get(name)))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(k) = self.key.iter().find(|k| cells_is_null(&cells[**k])) {
            return Err(format!(
                "key column `{}` is missing or null",
                self.columns[*k].0
            ));
        }
        Ok(Op::Write(cells))
    }

    fn delete(&self, key: Option<&[u8]>) -> Result<Op, String> {
        if self.key.is_empty() {
            return Err(
                "a tombstone (null value) deletes by key, but the output has no `key` columns"
                    .into(),
            );
        }
        let key = key.ok_or("a tombstone needs a record key to delete by")?;
        let parsed: Value = serde_json::from_slice(key)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(key).into_owned()));
        let cells = match (&parsed, self.key.as_slice()) {
            (Value::Object(fields), _) => self
                .key
                .iter()
                .map(|k| {
                    let (name, ty) = &self.columns[*k];
                    convert(name, *ty, fields.get(name))
                })
                .collect::<Result<Vec<_>, _>>()?,
            (scalar, [k]) => {
                let (name, ty) = &self.columns[*k];
                vec![convert(name, *ty, Some(scalar))?]
            }
            _ => {
                return Err("a tombstone's key must be a JSON object with every key column".into());
            }
        };
        if cells.iter().any(cells_is_null) {
            return Err("a tombstone's key is missing a key column".into());
        }
        Ok(Op::Delete(cells))
    }

    fn quote(&self, name: &str) -> String {
        let q = match self.dialect {
            Dialect::Postgres => '"',
            Dialect::Mysql => '`',
        };
        // Names are checked identifiers (config.rs): quoting cannot be escaped.
        name.split('.')
            .map(|part| format!("{q}{part}{q}"))
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The quoted column list: `"a", "b"`.
    fn column_list(&self) -> String {
        let cols: Vec<String> = self.columns.iter().map(|(c, _)| self.quote(c)).collect();
        cols.join(", ")
    }

    fn insert_head(&self) -> String {
        format!(
            "INSERT INTO {} ({}) ",
            self.quote(&self.table),
            self.column_list()
        )
    }

    /// `COPY` of every column into `target` (already quoted), CSV from the client.
    fn copy_statement(&self, target: &str) -> String {
        format!(
            "COPY {target} ({}) FROM STDIN (FORMAT csv)",
            self.column_list()
        )
    }

    fn conflict_tail(&self) -> String {
        let rest: Vec<&str> = self
            .columns
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.key.contains(i))
            .map(|(_, (c, _))| c.as_str())
            .collect();
        match self.dialect {
            Dialect::Postgres => {
                let key: Vec<String> = self
                    .key
                    .iter()
                    .map(|k| self.quote(&self.columns[*k].0))
                    .collect();
                let action = if rest.is_empty() {
                    "DO NOTHING".to_owned()
                } else {
                    let sets: Vec<String> = rest
                        .iter()
                        .map(|c| format!("{0} = EXCLUDED.{0}", self.quote(c)))
                        .collect();
                    format!("DO UPDATE SET {}", sets.join(", "))
                };
                format!(" ON CONFLICT ({}) {action}", key.join(", "))
            }
            Dialect::Mysql => {
                let sets: Vec<String> = if rest.is_empty() {
                    let k = self.quote(&self.columns[self.key[0]].0);
                    vec![format!("{k} = {k}")]
                } else {
                    rest.iter()
                        .map(|c| format!("{0} = VALUES({0})", self.quote(c)))
                        .collect()
                };
                format!(" ON DUPLICATE KEY UPDATE {}", sets.join(", "))
            }
        }
    }

    fn delete_head(&self) -> String {
        let key: Vec<String> = self
            .key
            .iter()
            .map(|k| self.quote(&self.columns[*k].0))
            .collect();
        format!(
            "DELETE FROM {} WHERE ({}) IN (",
            self.quote(&self.table),
            key.join(", ")
        )
    }

    /// The statements for `ops`, in order: runs of writes and runs of deletes. In an upsert run
    /// only the last write of each key is kept (a statement may not touch a row twice, and the
    /// last write is what the sequence would leave).
    fn runs<'o>(&self, ops: &[&'o Op]) -> Vec<(bool, Vec<&'o [Cell]>)> {
        let mut runs: Vec<(bool, Vec<&'o [Cell]>)> = Vec::new();
        for op in ops {
            let (is_write, cells) = match op {
                Op::Write(c) => (true, c.as_slice()),
                Op::Delete(c) => (false, c.as_slice()),
            };
            match runs.last_mut() {
                Some((w, rows)) if *w == is_write => rows.push(cells),
                _ => runs.push((is_write, vec![cells])),
            }
        }
        if self.mode == TableMode::Upsert {
            for (is_write, rows) in &mut runs {
                if *is_write {
                    let key_of = |row: &[Cell]| -> String {
                        format!(
                            "{:?}",
                            self.key.iter().map(|k| &row[*k]).collect::<Vec<_>>()
                        )
                    };
                    let last: HashMap<String, usize> = rows
                        .iter()
                        .enumerate()
                        .map(|(i, r)| (key_of(r), i))
                        .collect();
                    let mut i = 0;
                    rows.retain(|r| {
                        let keep = last[&key_of(r)] == i;
                        i += 1;
                        keep
                    });
                }
            }
        }
        runs
    }
}

fn cells_is_null(cell: &Cell) -> bool {
    match cell {
        Cell::Text(v) => v.is_none(),
        Cell::Bigint(v) => v.is_none(),
        Cell::Integer(v) => v.is_none(),
        Cell::Double(v) => v.is_none(),
        Cell::Boolean(v) => v.is_none(),
        Cell::Json(v) => v.is_none(),
    }
}

/// Binds one cell on a separated query builder (the same code for both databases).
macro_rules! bind_cell {
    ($sep:expr, $cell:expr) => {
        match $cell {
            Cell::Text(v) => $sep.push_bind(v.clone()),
            Cell::Bigint(v) => $sep.push_bind(*v),
            Cell::Integer(v) => $sep.push_bind(*v),
            Cell::Double(v) => $sep.push_bind(*v),
            Cell::Boolean(v) => $sep.push_bind(*v),
            Cell::Json(v) => $sep.push_bind(v.clone().map(Json)),
        }
    };
}

/// Writes `ops` in one transaction (the same code for both databases).
/// PostgreSQL batches of at least this many rows go through `COPY` (upserts through a staging
/// table; see BENCHMARKS.md).
const COPY_MIN_ROWS: usize = 32;

/// The `COPY` fast path, compiled for PostgreSQL only.
macro_rules! copy_if_worth_it {
    (copy, $tx:expr, $layout:expr, $is_write:expr, $rows:expr) => {
        if $is_write && $rows.len() >= COPY_MIN_ROWS {
            copy_rows(&mut $tx, $layout, &$rows).await?;
            continue;
        }
    };
    (no_copy, $($rest:tt)*) => {};
}

macro_rules! write_ops {
    ($db:ty, $copy:tt, $pool:expr, $layout:expr, $ops:expr, $offsets:expr) => {{
        let mut tx = $pool.begin().await?;
        let chunked = $layout.runs($ops).into_iter().flat_map(|(is_write, rows)| {
            rows.chunks($layout.batch_size)
                .map(|c| (is_write, c.to_vec()))
                .collect::<Vec<_>>()
        });
        for (is_write, rows) in chunked {
            copy_if_worth_it!($copy, tx, $layout, is_write, rows);
            let mut q = QueryBuilder::<$db>::new(if is_write {
                $layout.insert_head()
            } else {
                $layout.delete_head()
            });
            if is_write {
                q.push_values(rows, |mut sep, row| {
                    for cell in row {
                        bind_cell!(sep, cell);
                    }
                });
                if $layout.mode == TableMode::Upsert {
                    q.push($layout.conflict_tail());
                }
            } else {
                for (i, row) in rows.into_iter().enumerate() {
                    q.push(if i == 0 { "(" } else { ", (" });
                    let mut sep = q.separated(", ");
                    for cell in row {
                        bind_cell!(sep, cell);
                    }
                    q.push(")");
                }
                q.push(")");
            }
            q.build().execute(&mut *tx).await?;
        }
        if let Some(offsets) = $offsets {
            offsets_statement::<$db>(offsets)
                .build()
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }};
}

/// Source offsets stored with an exactly-once batch: table, group, (topic, partition, next).
struct StoredOffsets<'a> {
    table: &'a str,
    group: &'a str,
    next: Vec<(&'a str, i32, i64)>,
}

fn offsets_statement<'a, DB: sqlx::Database>(o: &'a StoredOffsets<'a>) -> QueryBuilder<'a, DB>
where
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i32: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut q = QueryBuilder::<DB>::new(format!(
        "INSERT INTO {} (group_id, topic, partition, next_offset) ",
        o.table
    ));
    q.push_values(&o.next, |mut sep, (topic, partition, next)| {
        sep.push_bind(o.group)
            .push_bind(*topic)
            .push_bind(*partition)
            .push_bind(*next);
    });
    q.push(
        " ON CONFLICT (group_id, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset",
    );
    q
}

fn offsets_table_ddl(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (group_id text NOT NULL, topic text NOT NULL, partition integer NOT NULL, next_offset bigint NOT NULL, PRIMARY KEY (group_id, topic, partition))"
    )
}

/// Where each partition resumes, as an exactly-once output stored it.
pub type ResumeOffsets = Result<HashMap<TopicPartition, i64>, String>;

/// A request for the stored offsets, answered by the writer thread.
type OffsetsQuery = SyncSender<ResumeOffsets>;

/// Appends `row` as one CSV line (PostgreSQL `COPY ... (FORMAT csv)`: an unquoted empty field
/// is NULL, a quoted one an empty string).
fn csv_row(out: &mut Vec<u8>, row: &[Cell]) {
    use std::io::Write as _;
    let quoted = |out: &mut Vec<u8>, text: &str| {
        out.push(b'"');
        for b in text.bytes() {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    };
    for (i, cell) in row.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = match cell {
            Cell::Text(Some(t)) => {
                quoted(out, t);
                Ok(())
            }
            Cell::Bigint(Some(v)) => write!(out, "{v}"),
            Cell::Integer(Some(v)) => write!(out, "{v}"),
            Cell::Double(Some(v)) if v.is_nan() => write!(out, "NaN"),
            Cell::Double(Some(v)) if v.is_infinite() => {
                write!(out, "{}Infinity", if *v < 0.0 { "-" } else { "" })
            }
            Cell::Double(Some(v)) => write!(out, "{v:?}"),
            Cell::Boolean(Some(v)) => write!(out, "{}", if *v { 't' } else { 'f' }),
            Cell::Json(Some(v)) => {
                quoted(out, &v.to_string());
                Ok(())
            }
            _ => Ok(()), // NULL
        };
    }
    out.push(b'\n');
}

async fn copy_rows(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    layout: &TableLayout,
    rows: &[&[Cell]],
) -> Result<(), sqlx::Error> {
    let mut data = Vec::with_capacity(rows.len() * 16 * layout.columns.len());
    for row in rows {
        csv_row(&mut data, row);
    }
    // Upserts: COPY into a session-local staging table shaped like the target (emptied at
    // commit), then one INSERT .. SELECT .. ON CONFLICT.
    let target = match layout.mode {
        TableMode::Insert => layout.quote(&layout.table),
        TableMode::Upsert => {
            sqlx::query(&format!(
                "CREATE TEMP TABLE IF NOT EXISTS sluice_stage (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
                layout.quote(&layout.table)
            ))
            .execute(&mut **tx)
            .await?;
            // Several upsert runs may share one transaction (deletes between them).
            sqlx::query("TRUNCATE sluice_stage")
                .execute(&mut **tx)
                .await?;
            "sluice_stage".to_owned()
        }
    };
    let mut copy = tx.copy_in_raw(&layout.copy_statement(&target)).await?;
    if let Err(err) = copy.send(data).await {
        let _ = copy.abort("sluice: sending the rows failed").await;
        return Err(err);
    }
    copy.finish().await?;
    if layout.mode == TableMode::Upsert {
        sqlx::query(&format!(
            "{}SELECT {} FROM sluice_stage{}",
            layout.insert_head(),
            layout.column_list(),
            layout.conflict_tail()
        ))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

enum Pool {
    Postgres(PgPool),
    Mysql(MySqlPool),
}

impl Pool {
    async fn write(
        &self,
        layout: &TableLayout,
        ops: &[&Op],
        offsets: Option<&StoredOffsets<'_>>,
    ) -> Result<(), sqlx::Error> {
        match self {
            Pool::Postgres(pool) => write_ops!(Postgres, copy, pool, layout, ops, offsets),
            Pool::Mysql(pool) => write_ops!(MySql, no_copy, pool, layout, ops, offsets),
        }
    }
}

/// Whether the database refuses the connection itself (authentication, TLS required, unknown
/// database, no privilege): no record is at fault, so no record may be skipped for it.
pub fn is_refusal(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Configuration(_) => true,
        sqlx::Error::Database(db) => {
            if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                // Access denied (user, database), unknown database, command denied.
                return matches!(my.number(), 1044 | 1045 | 1049 | 1142 | 1227);
            }
            db.code()
                .is_some_and(|code| code.starts_with("28") || code == "3D000" || code == "42501")
        }
        _ => false,
    }
}

/// Whether retrying can help: the connection or the server, not the data.
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => {
            if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                // Lock wait timeout, deadlock, too many connections, shutdown, gone away, lost,
                // killed.
                return matches!(
                    my.number(),
                    1205 | 1213 | 1040 | 1053 | 2006 | 2013 | 1927 | 1317
                );
            }
            // PostgreSQL SQLSTATE: connection exceptions, serialization failure, deadlock,
            // insufficient resources, operator intervention (shutdown), cannot connect now.
            db.code().is_some_and(|code| {
                code.starts_with("08")
                    || code.starts_with("53")
                    || code.starts_with("57P")
                    || code == "40001"
                    || code == "40P01"
            })
        }
        _ => false,
    }
}

struct Pending {
    op: Op,
    ack: Arc<Ack>,
    /// The record as emitted, kept only when rejected records go to the dead-letter topic.
    original: Option<Original>,
}

/// An emitted record's key, value and headers, owned.
struct Original {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
}

/// Shared with the pipeline: where failures and skips go.
#[derive(Debug, Clone)]
pub struct SinkContext {
    /// Offset bookkeeping: written rows acknowledge their units here.
    pub tracker: Arc<Mutex<OffsetTracker>>,
    /// The pipeline's first fatal error.
    pub failure: Fatal,
    /// What to do with a record the database rejects.
    pub on_rejection: ClassPolicy,
    /// Where rejected records go under `dead-letter`.
    pub dead_letters: Option<DeadLetters>,
    /// Metrics and logs.
    pub telemetry: Arc<Telemetry>,
    /// The consumer group (the key of exactly-once offsets).
    pub group: String,
}

/// A table output: a writer thread with its own connection pool.
pub struct TableSink {
    name: String,
    layout: Arc<TableLayout>,
    tx: Mutex<Option<SyncSender<Pending>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    give_up: Arc<AtomicBool>,
    keep_originals: bool,
    reachable: Arc<AtomicBool>,
    /// Exactly-once: asks the writer for the stored offsets.
    queries: Mutex<SyncSender<OffsetsQuery>>,
}

impl std::fmt::Debug for TableSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableSink")
            .field("name", &self.name)
            .field("table", &self.layout.table)
            .finish_non_exhaustive()
    }
}

impl TableSink {
    /// Starts the writer for output `name`. Connections are opened on first use, so a database
    /// that is down at start delays the pipeline instead of failing it.
    pub fn start(
        name: &str,
        dialect: Dialect,
        spec: &TableOutputSpec,
        ctx: SinkContext,
    ) -> Result<Self, SinkError> {
        let start_error = |field, message: String| SinkError::Start {
            output: name.to_owned(),
            field,
            message,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| start_error("", format!("cannot start the database runtime: {e}")))?;
        let pool = {
            let _guard = runtime.enter();
            // sqlx retries a refused connection until this runs out: short, so an unreachable
            // database shows (unready, SinkDown) within it, not after a long wait.
            let timeout = Duration::from_secs(2);
            match dialect {
                Dialect::Postgres => PgPoolOptions::new()
                    .max_connections(spec.max_connections)
                    .acquire_timeout(timeout)
                    .connect_lazy(&spec.url)
                    .map(Pool::Postgres),
                Dialect::Mysql => MySqlPoolOptions::new()
                    .max_connections(spec.max_connections)
                    .acquire_timeout(timeout)
                    .connect_lazy(&spec.url)
                    .map(Pool::Mysql),
            }
            .map_err(|e| start_error(".url", e.to_string()))?
        };
        let layout = Arc::new(TableLayout::new(dialect, spec));
        let (tx, rx) = std::sync::mpsc::sync_channel(spec.batch_size * 2);
        let (queries, queries_rx) = std::sync::mpsc::sync_channel(1);
        let give_up = Arc::new(AtomicBool::new(false));
        let keep_originals = ctx.on_rejection.then == Action::DeadLetter;
        let reachable = Arc::new(AtomicBool::new(true));
        let metrics = &ctx.telemetry.metrics;
        let writer = Writer {
            reachable: reachable.clone(),
            batch_rows: metrics.sink_batch_rows.with_label_values(&[name]),
            batch_seconds: metrics.sink_batch_seconds.with_label_values(&[name]),
            latency: metrics.end_to_end_seconds.with_label_values(&[name]),
            batch_started: std::cell::Cell::new(Instant::now()),
            name: name.to_owned(),
            layout: layout.clone(),
            pool,
            runtime,
            ctx,
            batch_size: spec.batch_size,
            linger: Duration::from_millis(spec.linger_ms),
            give_up: give_up.clone(),
            offsets_table: spec.exactly_once.then(|| spec.offsets_table.clone()),
            queries: queries_rx,
        };
        let thread = std::thread::Builder::new()
            .name(format!("sluice-sink-{name}"))
            .spawn(move || {
                let failure = writer.ctx.failure.clone();
                let name = writer.name.clone();
                // A bug here must stop the pipeline, not leave workers waiting on a dead writer.
                if let Err(panic) =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| writer.run(rx)))
                {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    failure.set(format!("output {name}: the database writer failed: {what}"));
                }
            })
            .map_err(|e| start_error("", format!("cannot start the writer thread: {e}")))?;
        Ok(TableSink {
            name: name.to_owned(),
            layout,
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            give_up,
            keep_originals,
            reachable,
            queries: Mutex::new(queries),
        })
    }

    /// Exactly-once: the offsets this output stored for the pipeline's group (creating the
    /// offsets table if needed), read by the writer thread with its own runtime and pool, so
    /// the caller (the rebalance callback on the poll thread) opens no connection. Waits at most
    /// 30 s.
    pub fn stored_offsets(&self) -> ResumeOffsets {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        lock(&self.queries)
            .send(reply)
            .map_err(|_| "the writer stopped".to_owned())?;
        answer
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| "timed out reading the stored offsets".to_owned())?
    }

    /// Whether the database currently accepts writes (readiness).
    pub fn reachable(&self) -> Arc<AtomicBool> {
        self.reachable.clone()
    }

    /// The row for `record` (a refusal names the output).
    pub fn row(&self, record: &Record<'_>) -> Result<Op, SinkError> {
        self.layout.row(record).map_err(|message| SinkError::Row {
            output: self.name.clone(),
            table: self.layout.table().to_owned(),
            message,
        })
    }

    /// Queues `record`'s row for `ack`'s units; blocks while the writer is behind
    /// (backpressure).
    pub fn send(&self, op: Op, record: &Record<'_>, ack: Arc<Ack>) -> Result<(), SinkError> {
        let original = (self.keep_originals).then(|| Original {
            key: record.key_bytes().map(<[u8]>::to_vec),
            value: record.value_bytes().map(<[u8]>::to_vec),
            headers: record
                .header_list()
                .iter()
                .map(|h| (h.key().to_owned(), h.value().to_vec()))
                .collect(),
        });
        let tx = self
            .tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| SinkError::Closed {
                output: self.name.clone(),
                what: "closed",
            })?;
        tx.send(Pending { op, ack, original })
            .map_err(|_| SinkError::Closed {
                output: self.name.clone(),
                what: "the writer stopped",
            })
    }

    /// Stops retrying: rows that cannot be written now are left unacknowledged (their offsets
    /// are not committed, so the next run writes them). Called when the drain time is up.
    pub fn give_up(&self) {
        self.give_up.store(true, Ordering::Release);
    }

    /// Writes what is queued, then ends the writer.
    pub fn close(&self) {
        drop(lock(&self.tx).take());
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

struct Writer {
    name: String,
    layout: Arc<TableLayout>,
    pool: Pool,
    runtime: tokio::runtime::Runtime,
    ctx: SinkContext,
    batch_size: usize,
    linger: Duration,
    give_up: Arc<AtomicBool>,
    /// Exactly-once: where the offsets go, in the same transaction as the rows.
    offsets_table: Option<String>,
    /// Exactly-once: requests for the stored offsets (served between batches).
    queries: Receiver<OffsetsQuery>,
    /// Cleared while the database is unavailable.
    reachable: Arc<AtomicBool>,
    batch_rows: Histogram,
    batch_seconds: Histogram,
    latency: Histogram,
    /// When the current batch began collecting.
    batch_started: std::cell::Cell<Instant>,
}

enum Outcome {
    Written,
    Rejected(sqlx::Error),
    GaveUp,
}

impl Writer {
    fn run(self, rx: Receiver<Pending>) {
        // sqlx returns pooled connections from `Drop`, which needs the runtime's context.
        let _context = self.runtime.enter();
        if self.offsets_table.is_some() {
            return self.run_exactly_once(rx);
        }
        if let (Pool::Postgres(pool), TableMode::Insert) = (&self.pool, self.layout.mode) {
            return self.run_streaming(&rx, pool);
        }
        let mut batch: Vec<Pending> = Vec::with_capacity(self.batch_size);
        loop {
            match rx.recv() {
                Ok(p) => batch.push(p),
                Err(_) => return,
            }
            self.batch_started.set(Instant::now());
            let deadline = Instant::now() + self.linger;
            while batch.len() < self.batch_size {
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(p) => batch.push(p),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
            if self.failed() {
                batch.clear(); // after a fatal error nothing more is acknowledged
                continue;
            }
            self.write_batch(std::mem::take(&mut batch));
        }
    }

    /// PostgreSQL inserts: each batch streams into `COPY` while it is collected, so the server
    /// works on the first rows while later ones are still arriving and being formatted (see
    /// BENCHMARKS.md). Any error falls back to the batch path with the rows collected so far
    /// (nothing of the failed attempt was committed): retries, row-by-row isolation, policy.
    fn run_streaming(&self, rx: &Receiver<Pending>, pool: &PgPool) {
        loop {
            let first = match rx.recv() {
                Ok(p) => p,
                Err(_) => return,
            };
            self.batch_started.set(Instant::now());
            if self.failed() {
                continue; // after a fatal error nothing more is acknowledged
            }
            if matches!(first.op, Op::Delete(_)) {
                self.write_batch(vec![first]);
                continue;
            }
            let mut batch = vec![first];
            let mut delete = None;
            let result = self.stream_batch(pool, rx, &mut batch, &mut delete);
            match result {
                Ok(()) => self.ack(&batch),
                Err(_) => self.write_batch(batch),
            }
            if let Some(d) = delete {
                self.write_batch(vec![d]);
            }
        }
    }

    fn stream_batch(
        &self,
        pool: &PgPool,
        rx: &Receiver<Pending>,
        batch: &mut Vec<Pending>,
        delete: &mut Option<Pending>,
    ) -> Result<(), sqlx::Error> {
        let rt = &self.runtime;
        let layout = &self.layout;
        let statement = layout.copy_statement(&layout.quote(&layout.table));
        let mut conn = rt.block_on(pool.acquire())?;
        let result = self.stream_into(&mut conn, &statement, rx, batch, delete);
        if result.is_err() {
            // Whatever state a failed COPY left the connection in, it is not reused.
            drop(conn.detach());
        }
        result
    }

    fn stream_into(
        &self,
        conn: &mut sqlx::pool::PoolConnection<Postgres>,
        statement: &str,
        rx: &Receiver<Pending>,
        batch: &mut Vec<Pending>,
        delete: &mut Option<Pending>,
    ) -> Result<(), sqlx::Error> {
        use sqlx::Connection as _;
        const CHUNK: usize = 64 * 1024;
        let rt = &self.runtime;
        let mut tx = rt.block_on((**conn).begin())?;
        let mut copy = rt.block_on(tx.copy_in_raw(statement))?;
        let mut buf = Vec::with_capacity(CHUNK + 1024);
        if let Op::Write(cells) = &batch[0].op {
            csv_row(&mut buf, cells);
        }
        let deadline = Instant::now() + self.linger;
        let mut sent = Ok(());
        while batch.len() < self.batch_size {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(p) => match &p.op {
                    Op::Write(cells) => {
                        csv_row(&mut buf, cells);
                        batch.push(p);
                    }
                    Op::Delete(_) => {
                        *delete = Some(p);
                        break;
                    }
                },
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
            if buf.len() >= CHUNK {
                let chunk = std::mem::replace(&mut buf, Vec::with_capacity(CHUNK + 1024));
                sent = rt.block_on(copy.send(chunk)).map(|_| ());
                if sent.is_err() {
                    break;
                }
            }
        }
        if sent.is_ok() && !buf.is_empty() {
            sent = rt.block_on(copy.send(buf)).map(|_| ());
        }
        if let Err(err) = sent {
            let _ = rt.block_on(copy.abort("sluice: sending rows failed"));
            return Err(err);
        }
        rt.block_on(copy.finish())?;
        rt.block_on(tx.commit())
    }

    /// Exactly-once: a row is written only once every worker is done with the events it came
    /// from (their units are in the tracker's processed prefix), in one transaction with the
    /// offset after that prefix. Rows of events not yet done wait; so the table never holds a
    /// row of an event past the stored offset, and a restart resumes exactly there.
    fn run_exactly_once(self, rx: Receiver<Pending>) {
        let table = self.offsets_table.clone().unwrap_or_default();
        let mut buffer: Vec<Pending> = Vec::new();
        loop {
            self.batch_started.set(Instant::now());
            let disconnected = match rx.recv_timeout(self.linger.max(Duration::from_millis(10))) {
                Ok(p) => {
                    buffer.push(p);
                    false
                }
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => true,
            };
            while let Ok(reply) = self.queries.try_recv() {
                let _ = reply.send(self.read_stored_offsets(&table));
            }
            if self.failed() {
                buffer.clear();
            }
            let snapshot = self
                .ctx
                .tracker
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .processed_snapshot();
            // Rows of the units seen processed were sent before they were marked: take them.
            while let Ok(p) = rx.try_recv() {
                buffer.push(p);
            }
            // A revoked partition's rows are left to its next owner, which resumes from the
            // stored offset.
            buffer.retain(|p| !p.ack.units().any(|(tp, u)| snapshot.is_stale(tp, u)));
            let (ready, waiting): (Vec<Pending>, Vec<Pending>) = buffer
                .into_iter()
                .partition(|p| p.ack.units().all(|(tp, u)| snapshot.covers(tp, u)));
            buffer = waiting;
            if !ready.is_empty() {
                let next: Vec<(&str, i32, i64)> = snapshot
                    .next_offsets()
                    .map(|(tp, next)| (tp.topic.as_str(), tp.partition, next))
                    .collect();
                let offsets = StoredOffsets {
                    table: &table,
                    group: &self.ctx.group,
                    next,
                };
                let ops: Vec<&Op> = ready.iter().map(|p| &p.op).collect();
                match self.write_retrying_with(&ops, Some(&offsets)) {
                    Outcome::Written => self.ack(&ready),
                    Outcome::GaveUp => {}
                    Outcome::Rejected(err) => self.fail(format!(
                        "output {} (table {}) rejected a batch written exactly-once: {err}: {}",
                        self.name,
                        self.layout.table,
                        if is_refusal(&err) {
                            "check the URL, credentials and TLS settings"
                        } else {
                            "fix the table or the plugin's records"
                        }
                    )),
                }
            }
            if disconnected {
                return; // what is still waiting was never done: its offsets are not stored
            }
        }
    }

    fn failed(&self) -> bool {
        self.ctx.failure.is_set()
    }

    /// The offsets stored in `table` for the pipeline's group (creating the table if needed).
    fn read_stored_offsets(&self, table: &str) -> ResumeOffsets {
        use sqlx::Row;
        let Pool::Postgres(pool) = &self.pool else {
            return Err("exactly-once needs a PostgreSQL output".into());
        };
        self.runtime.block_on(async {
            sqlx::query(&offsets_table_ddl(table))
                .execute(pool)
                .await
                .map_err(|e| e.to_string())?;
            let rows = sqlx::query(&format!(
                "SELECT topic, partition, next_offset FROM {table} WHERE group_id = $1"
            ))
            .bind(&self.ctx.group)
            .fetch_all(pool)
            .await
            .map_err(|e| e.to_string())?;
            rows.iter()
                .map(|r| {
                    Ok((
                        TopicPartition::new(r.try_get::<String, _>(0)?, r.try_get::<i32, _>(1)?),
                        r.try_get::<i64, _>(2)?,
                    ))
                })
                .collect::<Result<_, sqlx::Error>>()
                .map_err(|e| e.to_string())
        })
    }

    /// The rows are committed: acknowledges their units and counts the batch.
    fn ack(&self, rows: &[Pending]) {
        {
            let mut tracker = lock(&self.ctx.tracker);
            for row in rows {
                for (tp, unit) in row.ack.units() {
                    tracker.acked(tp, unit);
                }
            }
        }
        if self.ctx.telemetry.metrics.enabled {
            self.batch_rows.observe(rows.len() as f64);
            self.batch_seconds
                .observe(self.batch_started.get().elapsed().as_secs_f64());
            for row in rows {
                if let Some(age) = row.ack.age_seconds() {
                    self.latency.observe(age);
                }
            }
        }
    }

    /// Writes `ops`, retrying transient errors with backoff until it works or the pipeline gives
    /// up.
    fn write_retrying(&self, ops: &[&Op]) -> Outcome {
        self.write_retrying_with(ops, None)
    }

    fn write_retrying_with(&self, ops: &[&Op], offsets: Option<&StoredOffsets<'_>>) -> Outcome {
        let mut backoff = Duration::from_millis(100);
        let mut logged = false;
        loop {
            match self
                .runtime
                .block_on(self.pool.write(&self.layout, ops, offsets))
            {
                Ok(()) => {
                    if logged {
                        self.ctx.telemetry.emit(SinkRecovered {
                            what: "database",
                            output: &self.name,
                            reachable: &self.reachable,
                        });
                    }
                    return Outcome::Written;
                }
                Err(err) if is_transient(&err) => {
                    if self.give_up.load(Ordering::Acquire) || self.failed() {
                        return Outcome::GaveUp;
                    }
                    self.ctx.telemetry.emit(SinkUnavailable {
                        what: "database",
                        output: &self.name,
                        error: &err.to_string(),
                        reachable: &self.reachable,
                        first: !logged,
                    });
                    logged = true;
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(err) => return Outcome::Rejected(err),
            }
        }
    }

    fn write_batch(&self, batch: Vec<Pending>) {
        let ops: Vec<&Op> = batch.iter().map(|p| &p.op).collect();
        match self.write_retrying(&ops) {
            Outcome::Written => self.ack(&batch),
            Outcome::GaveUp => {}
            Outcome::Rejected(err) if is_refusal(&err) => self.fail(format!(
                "output {} (table {}): the database refuses the connection: {err}: check the URL, credentials and TLS settings",
                self.name, self.layout.table
            )),
            Outcome::Rejected(err) if batch.len() == 1 => self.reject(&batch[0], &err),
            Outcome::Rejected(_) => {
                // Find the rejected records: one row at a time, in order.
                for row in &batch {
                    match self.write_retrying(&[&row.op]) {
                        Outcome::Written => self.ack(std::slice::from_ref(row)),
                        Outcome::GaveUp => return,
                        Outcome::Rejected(err) => {
                            self.reject(row, &err);
                            if self.failed() {
                                return;
                            }
                        }
                    }
                }
            }
        }
    }

    /// A record the database rejected for good: retried alone per the policy, then skipped,
    /// dead-lettered or fatal.
    fn reject(&self, row: &Pending, err: &sqlx::Error) {
        self.ctx.telemetry.emit(SinkRejected { output: &self.name });
        let verdict =
            error_policy::decide_sleeping(&self.ctx.on_rejection, err.to_string(), || {
                match self.write_retrying(&[&row.op]) {
                    Outcome::Written => Attempt::Succeeded,
                    Outcome::GaveUp => Attempt::Stop,
                    Outcome::Rejected(err) => Attempt::Failed(err.to_string()),
                }
            });
        let (action, attempts, message) = match verdict {
            Verdict::Recovered { .. } => return self.ack(std::slice::from_ref(row)),
            Verdict::Stopped => return,
            Verdict::Settled {
                action,
                attempts,
                message,
            } => (action, attempts, message),
        };
        let what = match &row.op {
            Op::Write(_) => "a row",
            Op::Delete(_) => "a delete",
        };
        let described = format!("{what} the database rejected");
        let source = row.ack.units().next().map(|(tp, _)| tp.clone());
        // A row has no single source offset (a unit may hold many events): its partition.
        let at = source
            .as_ref()
            .map_or_else(String::new, ToString::to_string);
        let failed = Failed {
            what: &described,
            topic: source.as_ref().map_or("", |tp| tp.topic.as_str()),
            partition: source.as_ref().map_or(-1, |tp| tp.partition),
            offset: None,
            class: Class::SinkRejection.name(),
            attempts,
            message: &message,
            output: Some(&self.name),
            at: &at,
        };
        match action {
            Action::Skip => {
                self.ctx.telemetry.emit(EventSkipped(failed));
                self.ack(std::slice::from_ref(row));
            }
            Action::DeadLetter => match self.dead_letter(row, &message, attempts) {
                Ok(()) => {
                    let to = self
                        .ctx
                        .dead_letters
                        .as_ref()
                        .map_or("", |d| d.label.as_str());
                    self.ctx
                        .telemetry
                        .emit(EventDeadLettered { failed, to });
                    self.ack(std::slice::from_ref(row));
                }
                Err(e) => self.fail(format!(
                    "output {}: cannot write the dead letter for a rejected record: {e}",
                    self.name
                )),
            },
            Action::Fail => self.fail(format!(
                "output {} (table {}) rejected {what}: {message}: fix the table or the plugin's records, or set `error-policy.sink-rejection` to skip, dead-letter or retry",
                self.name, self.layout.table
            )),
        }
    }

    fn dead_letter(&self, row: &Pending, message: &str, attempts: u32) -> Result<(), SinkError> {
        let (Some(dlq), Some(original)) = (&self.ctx.dead_letters, &row.original) else {
            return Err(SinkError::NoDeadLetter("no dead-letter topic"));
        };
        let Some((tp, _)) = row.ack.units().next() else {
            return Err(SinkError::NoDeadLetter("the record has no source"));
        };
        let failure = Failure {
            class: Class::SinkRejection.name(),
            message,
            attempts,
            topic: &tp.topic,
            partition: tp.partition,
            offset: None,
            output: Some(&self.name),
        };
        let headers: Vec<Header<'_>> = original
            .headers
            .iter()
            .map(|(k, v)| Header::new(k, v))
            .collect();
        // Counted for the units before the row's own acknowledgement can complete them.
        if dlq.acknowledged_later() {
            let mut tracker = lock(&self.ctx.tracker);
            for (tp, unit) in row.ack.units() {
                tracker.emitted(tp, unit, 1);
            }
        }
        dlq.send(
            original.key.as_deref(),
            original.value.as_deref(),
            &headers,
            &failure,
            row.ack.clone(),
        )
    }

    fn fail(&self, message: String) {
        self.ctx.failure.set(message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TableOutputSpec;

    fn layout(dialect: Dialect, mode: &str) -> TableLayout {
        let spec: TableOutputSpec = serde_yaml_ng::from_str(&format!(
            "url: x\ntable: app.rides\ncolumns: {{id: bigint, city: text, fare: double, paid: boolean, extra: json}}\nkey: [id]\nmode: {mode}\n"
        ))
        .unwrap();
        TableLayout::new(dialect, &spec)
    }

    #[test]
    fn a_json_object_fills_the_columns_by_name() {
        let l = layout(Dialect::Postgres, "upsert");
        let value = br#"{"id": "7", "city": "Jakarta", "fare": 12, "paid": true, "extra": {"a": 1}, "other": 1}"#;
        let op = l.row(&Record::to("t").value(value)).unwrap();
        // Columns in name order: city, extra, fare, id, paid.
        assert_eq!(
            op,
            Op::Write(vec![
                Cell::Text(Some("Jakarta".into())),
                Cell::Json(Some(serde_json::json!({"a": 1}))),
                Cell::Double(Some(12.0)),
                Cell::Bigint(Some(7)),
                Cell::Boolean(Some(true)),
            ])
        );
        let err = l
            .row(&Record::to("t").value(br#"{"id": 1, "fare": "cheap"}"#))
            .unwrap_err();
        assert_eq!(err, r#"field `fare`: expected a number, got "cheap""#);
        let err = l
            .row(&Record::to("t").value(br#"{"city": "x"}"#))
            .unwrap_err();
        assert_eq!(err, "key column `id` is missing or null");
    }

    #[test]
    fn a_tombstone_deletes_by_the_record_key() {
        let l = layout(Dialect::Mysql, "upsert");
        assert_eq!(
            l.row(&Record::to("t").key(b"42").tombstone()).unwrap(),
            Op::Delete(vec![Cell::Bigint(Some(42))])
        );
        assert_eq!(
            l.row(&Record::to("t").key(br#"{"id": 43}"#).tombstone())
                .unwrap(),
            Op::Delete(vec![Cell::Bigint(Some(43))])
        );
        assert!(l.row(&Record::to("t").tombstone()).is_err());
    }

    #[test]
    fn copy_rows_are_csv_with_unquoted_nulls() {
        let mut out = Vec::new();
        csv_row(
            &mut out,
            &[
                Cell::Text(Some("say \"hi\", ok".into())),
                Cell::Json(Some(serde_json::json!({"a": "b"}))),
                Cell::Double(Some(12.0)),
                Cell::Bigint(Some(-7)),
                Cell::Boolean(Some(false)),
                Cell::Text(None),
                Cell::Text(Some(String::new())),
            ],
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"say \"\"hi\"\", ok\",\"{\"\"a\"\":\"\"b\"\"}\",12.0,-7,f,,\"\"\n"
        );
    }

    #[test]
    fn statements_quote_names_per_dialect() {
        let pg = layout(Dialect::Postgres, "upsert");
        assert_eq!(
            pg.insert_head(),
            r#"INSERT INTO "app"."rides" ("city", "extra", "fare", "id", "paid") "#
        );
        assert_eq!(
            pg.conflict_tail(),
            r#" ON CONFLICT ("id") DO UPDATE SET "city" = EXCLUDED."city", "extra" = EXCLUDED."extra", "fare" = EXCLUDED."fare", "paid" = EXCLUDED."paid""#
        );
        let my = layout(Dialect::Mysql, "upsert");
        assert_eq!(
            my.conflict_tail(),
            " ON DUPLICATE KEY UPDATE `city` = VALUES(`city`), `extra` = VALUES(`extra`), `fare` = VALUES(`fare`), `paid` = VALUES(`paid`)"
        );
        assert_eq!(
            my.delete_head(),
            "DELETE FROM `app`.`rides` WHERE (`id`) IN ("
        );
    }

    #[test]
    fn upsert_runs_keep_the_last_write_per_key_and_record_order() {
        let l = layout(Dialect::Postgres, "upsert");
        let w = |id: i64, city: &str| {
            Op::Write(vec![
                Cell::Text(Some(city.into())),
                Cell::Json(None),
                Cell::Double(None),
                Cell::Bigint(Some(id)),
                Cell::Boolean(None),
            ])
        };
        let ops = [
            w(1, "a"),
            w(2, "b"),
            w(1, "c"),
            Op::Delete(vec![Cell::Bigint(Some(2))]),
            w(2, "d"),
        ];
        let refs: Vec<&Op> = ops.iter().collect();
        let runs = l.runs(&refs);
        assert_eq!(runs.len(), 3, "write run, delete run, write run");
        assert!(runs[0].0 && !runs[1].0 && runs[2].0);
        let cities: Vec<&Cell> = runs[0].1.iter().map(|r| &r[0]).collect();
        assert_eq!(
            cities,
            [&Cell::Text(Some("b".into())), &Cell::Text(Some("c".into()))],
            "key 1 keeps its last write, in the position of that write"
        );
    }
}
