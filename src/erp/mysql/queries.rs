//! The connector's SQL on MariaDB/MySQL ([`ModelQueries`]): statements
//! prepared once per connection and checked against the connector's contract.
//! Keys and trigger rows go in as one JSON array of tuples (`[["SKU-1","WH1"],
//! …]`), which the SQL unpacks with `JSON_TABLE(?, '$[*]' COLUMNS(…))`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row, Statement};
use tokio::sync::{Mutex, MutexGuard};

use super::binlog_pos::BinlogPos;
use super::binlog_value::value_text;
use crate::erp::committed::{CommittedTxn, TriggerRow};
use crate::erp::entity_model::{Entity, EntityKey, EntityModels, ModelError};
use crate::erp::model_queries::{ModelQueries, TextRow};
use crate::erp::position::Position;
use crate::mysql::{error_text, is_retryable};

/// How long a batch waits for its transactions to become visible before the
/// source restarts (and tries again).
const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(30);

struct Named {
    entity: String,
    what: String,
    statement: Statement,
    /// Whether it takes the one JSON parameter.
    takes_json: bool,
}

/// The connector's statements, prepared on one connection (a MariaDB/MySQL
/// prepared statement belongs to the connection that prepared it).
struct Session {
    conn: Conn,
    model: Vec<Named>,
    all_keys: Vec<Named>,
    triggers: Vec<Vec<Named>>,
}

/// Which of the connector's statements to run.
#[derive(Clone, Copy)]
enum Which {
    Model(usize),
    AllKeys(usize),
    Trigger(usize, usize),
}

impl Session {
    /// Prepares every statement on `conn` and checks each against the
    /// connector's contract (one JSON parameter, the key and value columns),
    /// so a broken connector fails at start with the entity and column named.
    async fn prepare(mut conn: Conn, models: &EntityModels) -> Result<Session, ModelError> {
        let mut model = Vec::new();
        let mut all_keys = Vec::new();
        let mut triggers = Vec::new();
        for e in &models.entities {
            let key_columns = e.key_columns();
            model.push(
                prepare(
                    &mut conn,
                    e,
                    "model",
                    &e.def.model,
                    true,
                    &e.value_columns(),
                )
                .await?,
            );
            all_keys.push(
                prepare(
                    &mut conn,
                    e,
                    "all_keys",
                    &e.def.all_keys,
                    false,
                    &key_columns,
                )
                .await?,
            );
            let mut ts = Vec::new();
            for t in &e.def.triggers {
                let what = format!("trigger `{}` keys", t.table);
                ts.push(prepare(&mut conn, e, &what, &t.keys, true, &key_columns).await?);
            }
            triggers.push(ts);
        }
        Ok(Session {
            conn,
            model,
            all_keys,
            triggers,
        })
    }
}

/// Prepared statements on one or more connections. A query takes a free
/// connection (else waits for one in turn), so the streaming source's batches
/// do not queue on one server thread: with one connection the server and
/// Flywheel waited for each other's round trips (the machine 40% idle while
/// catching up). A snapshot is read on its one snapshot connection.
pub struct MyQueries {
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
    /// The newest binlog position a consistent snapshot stood at: whatever
    /// committed up to it stays visible, so a batch below it needs no check.
    /// Catching up, the first check stands past the whole backlog; each
    /// later check took a connection from the batches' reads (1-80 ms, about
    /// 15 on average, of each batch's 60-150 in the capture bench).
    visible: AtomicU64,
}

impl MyQueries {
    /// Prepares every statement on `conn` and checks each against the
    /// connector's contract (one JSON parameter, the key and value columns),
    /// so a broken connector fails at start with the entity and column named.
    pub async fn prepare(conn: Conn, models: &EntityModels) -> Result<MyQueries, ModelError> {
        MyQueries::prepare_on(vec![conn], models).await
    }

    /// As `prepare`, on each of `conns` (at least one), taken in turn.
    pub async fn prepare_on(
        conns: Vec<Conn>,
        models: &EntityModels,
    ) -> Result<MyQueries, ModelError> {
        let sessions = try_join_all(conns.into_iter().map(|c| Session::prepare(c, models))).await?;
        if sessions.is_empty() {
            return Err(ModelError::Invalid {
                entity: String::new(),
                reason: "no query connection".into(),
            });
        }
        Ok(MyQueries {
            sessions: sessions.into_iter().map(Mutex::new).collect(),
            next: AtomicUsize::new(0),
            visible: AtomicU64::new(0),
        })
    }

    /// A free connection, else the next one in turn once it is free.
    async fn session(&self) -> MutexGuard<'_, Session> {
        let n = self.sessions.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        for i in 0..n {
            if let Ok(session) = self.sessions[(start + i) % n].try_lock() {
                return session;
            }
        }
        self.sessions[start].lock().await
    }

    /// Runs a statement outside the connector's (e.g. `COMMIT` after a
    /// snapshot) on the first connection, the snapshot's.
    pub async fn execute(&self, sql: &str) -> Result<(), mysql_async::Error> {
        self.sessions[0].lock().await.conn.query_drop(sql).await
    }

    async fn query(&self, which: Which, json: Option<String>) -> Result<Vec<TextRow>, ModelError> {
        let mut session = self.session().await;
        let Session {
            conn,
            model,
            all_keys,
            triggers,
        } = &mut *session;
        let s = match which {
            Which::Model(e) => &model[e],
            Which::AllKeys(e) => &all_keys[e],
            Which::Trigger(e, t) => &triggers[e][t],
        };
        let result = match json.filter(|_| s.takes_json) {
            Some(j) => conn.exec::<Row, _, _>(&s.statement, (j,)).await,
            None => conn.exec::<Row, _, _>(&s.statement, ()).await,
        };
        let rows = result.map_err(|e| ModelError::Query {
            entity: s.entity.clone(),
            what: s.what.clone(),
            reason: error_text(&e),
            retryable: is_retryable(&e),
        })?;
        Ok(rows.iter().map(text_row).collect())
    }

    /// The binlog position of a fresh consistent snapshot: every transaction
    /// committed up to it is visible to queries from now on (MariaDB orders
    /// engine commits as the binlog does and reports where a snapshot stands).
    async fn visible_up_to(&self) -> Result<Option<Position>, mysql_async::Error> {
        let mut session = self.session().await;
        let conn = &mut session.conn;
        conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            .await?;
        let status: Vec<(String, String)> = conn
            .query("SHOW SESSION STATUS LIKE 'binlog_snapshot_%'")
            .await?;
        conn.query_drop("COMMIT").await?;
        let get = |name: &str| {
            status
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        Ok(
            match (get("Binlog_snapshot_file"), get("Binlog_snapshot_position")) {
                (Some(file), Some(pos)) => pos
                    .parse()
                    .ok()
                    .and_then(|pos| BinlogPos::new(file, pos).position()),
                _ => None,
            },
        )
    }
}

impl ModelQueries for MyQueries {
    fn parallelism(&self) -> usize {
        self.sessions.len()
    }

    async fn trigger_keys(
        &self,
        entity: usize,
        trigger: usize,
        rows: &[TriggerRow],
    ) -> Result<Vec<TextRow>, ModelError> {
        let json = serde_json::to_string(rows).unwrap_or_else(|_| "[]".into());
        self.query(Which::Trigger(entity, trigger), Some(json))
            .await
    }

    async fn all_keys(&self, entity: usize) -> Result<Vec<TextRow>, ModelError> {
        self.query(Which::AllKeys(entity), None).await
    }

    async fn model(&self, entity: usize, keys: &[EntityKey]) -> Result<Vec<TextRow>, ModelError> {
        let tuples: Vec<&Vec<String>> = keys.iter().map(|k| &k.0).collect();
        let json = serde_json::to_string(&tuples).unwrap_or_else(|_| "[]".into());
        self.query(Which::Model(entity), Some(json)).await
    }

    /// Waits until a consistent snapshot stands at or past the newest of
    /// `txns` (MariaDB can send a transaction's binlog events before its
    /// engine commit is visible to other sessions).
    async fn wait_visible(&self, txns: &[&CommittedTxn]) -> Result<(), ModelError> {
        let Some(target) = txns.iter().map(|t| t.version).max() else {
            return Ok(());
        };
        if target.0 <= self.visible.load(Ordering::Acquire) {
            return Ok(());
        }
        let deadline = Instant::now() + VISIBILITY_TIMEOUT;
        let mut pause = Duration::from_micros(200);
        loop {
            let at = self
                .visible_up_to()
                .await
                .map_err(|e| ModelError::Visibility {
                    reason: format!("SHOW STATUS LIKE 'binlog_snapshot_%': {}", error_text(&e)),
                    retryable: is_retryable(&e),
                })?;
            match at {
                // A server without binlog_snapshot_* (MySQL) cannot tell;
                // its commits are visible by the time the client sees them.
                None => {
                    self.visible.store(u64::MAX, Ordering::Release);
                    return Ok(());
                }
                Some(at) if at >= target => {
                    self.visible.fetch_max(at.0, Ordering::AcqRel);
                    return Ok(());
                }
                Some(at) if Instant::now() >= deadline => {
                    return Err(ModelError::Visibility {
                        reason: format!(
                            "the server's consistent snapshots stayed at {at} for {} s, before the transaction at {target}",
                            VISIBILITY_TIMEOUT.as_secs()
                        ),
                        retryable: true,
                    });
                }
                Some(_) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
            }
        }
    }
}

async fn prepare(
    conn: &mut Conn,
    e: &Entity,
    what: &str,
    sql: &str,
    takes_json: bool,
    required_columns: &[&str],
) -> Result<Named, ModelError> {
    let invalid = |reason: String| ModelError::Invalid {
        entity: e.name.clone(),
        reason,
    };
    let statement = conn
        .prep(sql)
        .await
        .map_err(|err| invalid(format!("{what} SQL does not prepare: {}", error_text(&err))))?;
    let wanted = usize::from(takes_json);
    if statement.num_params() as usize != wanted {
        return Err(invalid(format!(
            "{what} SQL takes {} parameters, expected {wanted}{}",
            statement.num_params(),
            if takes_json {
                " (one `?`: a JSON array of tuples, read with JSON_TABLE(?, '$[*]' COLUMNS(...)))"
            } else {
                ""
            }
        )));
    }
    let columns = statement.columns();
    for col in required_columns {
        if !columns.iter().any(|c| c.name_str() == *col) {
            return Err(invalid(format!("{what} SQL returns no column `{col}`")));
        }
    }
    Ok(Named {
        entity: e.name.clone(),
        what: what.to_owned(),
        statement,
        takes_json,
    })
}

/// Every column as text, named by its label.
fn text_row(row: &Row) -> TextRow {
    row.columns_ref()
        .iter()
        .enumerate()
        .map(|(i, col)| {
            let v = row.as_ref(i).and_then(value_text);
            (col.name_str().into_owned(), v)
        })
        .collect()
}
