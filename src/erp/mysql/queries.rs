//! The connector's SQL on MariaDB/MySQL ([`ModelQueries`]): statements
//! prepared once per connection and checked against the connector's contract.
//! Keys and trigger rows go in as one JSON array of tuples (`[["SKU-1","WH1"],
//! …]`), which the SQL unpacks with `JSON_TABLE(?, '$[*]' COLUMNS(…))`.

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row, Statement};
use tokio::sync::Mutex;

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

/// Prepared statements on one connection. Queries share the connection one
/// at a time.
pub struct MyQueries {
    conn: Mutex<Conn>,
    model: Vec<Named>,
    all_keys: Vec<Named>,
    triggers: Vec<Vec<Named>>,
}

impl MyQueries {
    /// Prepares every statement on `conn` and checks each against the
    /// connector's contract (one JSON parameter, the key and value columns),
    /// so a broken connector fails at start with the entity and column named.
    pub async fn prepare(mut conn: Conn, models: &EntityModels) -> Result<MyQueries, ModelError> {
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
        Ok(MyQueries {
            conn: Mutex::new(conn),
            model,
            all_keys,
            triggers,
        })
    }

    /// Runs a statement outside the connector's (e.g. `COMMIT` after a snapshot).
    pub async fn execute(&self, sql: &str) -> Result<(), mysql_async::Error> {
        self.conn.lock().await.query_drop(sql).await
    }

    async fn query(&self, s: &Named, json: Option<String>) -> Result<Vec<TextRow>, ModelError> {
        let mut conn = self.conn.lock().await;
        let result = match json {
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
        let mut conn = self.conn.lock().await;
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
    async fn trigger_keys(
        &self,
        entity: usize,
        trigger: usize,
        rows: &[TriggerRow],
    ) -> Result<Vec<TextRow>, ModelError> {
        let json = serde_json::to_string(rows).unwrap_or_else(|_| "[]".into());
        self.query(&self.triggers[entity][trigger], Some(json))
            .await
    }

    async fn all_keys(&self, entity: usize) -> Result<Vec<TextRow>, ModelError> {
        self.query(&self.all_keys[entity], None).await
    }

    async fn model(&self, entity: usize, keys: &[EntityKey]) -> Result<Vec<TextRow>, ModelError> {
        let tuples: Vec<&Vec<String>> = keys.iter().map(|k| &k.0).collect();
        let json = serde_json::to_string(&tuples).unwrap_or_else(|_| "[]".into());
        let s = &self.model[entity];
        self.query(s, s.takes_json.then_some(json)).await
    }

    /// Waits until a consistent snapshot stands at or past the newest of
    /// `txns` (MariaDB can send a transaction's binlog events before its
    /// engine commit is visible to other sessions).
    async fn wait_visible(&self, txns: &[&CommittedTxn]) -> Result<(), ModelError> {
        let Some(target) = txns.iter().map(|t| t.version).max() else {
            return Ok(());
        };
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
                None => return Ok(()),
                Some(at) if at >= target => return Ok(()),
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
