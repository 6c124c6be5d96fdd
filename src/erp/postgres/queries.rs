//! The connector's SQL on PostgreSQL ([`ModelQueries`]): statements prepared
//! once per connection and checked against the connector's contract, keys
//! and trigger columns passed as one `text[]` per part.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use futures::future::try_join_all;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row, Statement};

use crate::erp::committed::{CommittedTxn, TriggerRow};
use crate::erp::entity_model::{Entity, EntityKey, EntityModels, ModelError};
use crate::erp::model_queries::{ModelQueries, TextRow};
use crate::pg::error::{self as pg_error, db_error_text};

/// What a statement is for, to name it in errors.
struct Named {
    entity: String,
    what: String,
    statement: Statement,
    /// Its `text[]` parameters: one per key part or trigger column.
    params: usize,
}

/// Prepared statements on one connection (statements are per connection).
struct Prepared {
    client: Client,
    model: Vec<Named>,
    all_keys: Vec<Named>,
    triggers: Vec<Vec<Named>>,
}

/// The connector's statements on one or more connections. Queries go to the
/// connections in turn: the re-reads of a large batch are the connector's
/// SQL, and on one connection they use one server process, one core.
pub struct PgQueries {
    conns: Vec<Prepared>,
    next: AtomicUsize,
    /// The newest snapshot xmin a visibility check saw (see
    /// `visibility::wait_until_visible`).
    visible_horizon: AtomicU64,
}

impl PgQueries {
    /// Prepares every statement on each of `clients` (at least one) and checks
    /// each against the connector's contract (parameters, returned columns and
    /// their types), so a broken connector fails at start with the entity and
    /// column named. A snapshot read passes one client: its transaction is
    /// the snapshot.
    pub async fn prepare(
        clients: Vec<Client>,
        models: &EntityModels,
    ) -> Result<PgQueries, ModelError> {
        // Each connection's statements are prepared pipelined, and the
        // connections at once: one round trip each, not one per statement
        // (a restart's catch-up waited for them).
        let conns = try_join_all(clients.into_iter().map(|c| Prepared::new(c, models))).await?;
        assert!(!conns.is_empty(), "PgQueries needs a connection");
        Ok(PgQueries {
            conns,
            next: AtomicUsize::new(0),
            visible_horizon: AtomicU64::new(0),
        })
    }

    /// The first connection, for what else the source runs on it.
    pub fn client(&self) -> &Client {
        &self.conns[0].client
    }

    fn conn(&self) -> &Prepared {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        &self.conns[i]
    }
}

impl Prepared {
    async fn new(client: Client, models: &EntityModels) -> Result<Prepared, ModelError> {
        let c = &client;
        let entities = try_join_all(models.entities.iter().map(|e| async move {
            let (key_columns, value_columns) = (e.key_columns(), e.value_columns());
            let triggers = try_join_all(e.def.triggers.iter().map(|t| {
                let key_columns = &key_columns;
                async move {
                    let what = format!("trigger `{}` keys", t.table);
                    prepare(c, e, &what, &t.keys, t.columns.len(), key_columns).await
                }
            }));
            futures::try_join!(
                prepare(c, e, "model", &e.def.model, e.def.key.len(), &value_columns),
                prepare(c, e, "all_keys", &e.def.all_keys, 0, &key_columns),
                triggers,
            )
        }))
        .await?;
        let mut q = Prepared {
            client,
            model: Vec::new(),
            all_keys: Vec::new(),
            triggers: Vec::new(),
        };
        for (model, all_keys, triggers) in entities {
            q.model.push(model);
            q.all_keys.push(all_keys);
            q.triggers.push(triggers);
        }
        Ok(q)
    }

    async fn query(
        &self,
        s: &Named,
        params: &[Vec<Option<&str>>],
    ) -> Result<Vec<TextRow>, ModelError> {
        let params: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let rows = self
            .client
            .query(&s.statement, &params)
            .await
            .map_err(|e| ModelError::Query {
                entity: s.entity.clone(),
                what: s.what.clone(),
                reason: db_error_text(&e),
                retryable: pg_error::is_retryable(&e),
            })?;
        Ok(rows.iter().map(text_row).collect())
    }
}

impl ModelQueries for PgQueries {
    async fn trigger_keys(
        &self,
        entity: usize,
        trigger: usize,
        rows: &[TriggerRow],
    ) -> Result<Vec<TextRow>, ModelError> {
        let c = self.conn();
        let s = &c.triggers[entity][trigger];
        let columns: Vec<Vec<Option<&str>>> = (0..s.params)
            .map(|c| {
                rows.iter()
                    .map(|r| r.get(c).and_then(|v| v.as_deref()))
                    .collect()
            })
            .collect();
        c.query(s, &columns).await
    }

    async fn all_keys(&self, entity: usize) -> Result<Vec<TextRow>, ModelError> {
        let c = self.conn();
        c.query(&c.all_keys[entity], &[]).await
    }

    async fn model(&self, entity: usize, keys: &[EntityKey]) -> Result<Vec<TextRow>, ModelError> {
        let c = self.conn();
        let s = &c.model[entity];
        let arrays: Vec<Vec<Option<&str>>> = (0..s.params)
            .map(|i| {
                keys.iter()
                    .map(|k| k.0.get(i).map(String::as_str))
                    .collect()
            })
            .collect();
        c.query(s, &arrays).await
    }

    fn parallelism(&self) -> usize {
        self.conns.len()
    }

    async fn wait_visible(&self, txns: &[&CommittedTxn]) -> Result<(), ModelError> {
        // A Begin's xid is 32 bits; `txid` only widens it.
        let xids: Vec<u32> = txns.iter().map(|t| t.txid as u32).collect();
        super::visibility::wait_until_visible(self.client(), &xids, &self.visible_horizon)
            .await
            .map_err(|e| ModelError::Visibility {
                reason: format!("pg_current_snapshot(): {}", db_error_text(&e)),
                retryable: pg_error::is_retryable(&e),
            })
    }
}

async fn prepare(
    client: &Client,
    e: &Entity,
    what: &str,
    sql: &str,
    params: usize,
    required_columns: &[&str],
) -> Result<Named, ModelError> {
    let invalid = |reason: String| ModelError::Invalid {
        entity: e.name.clone(),
        reason,
    };
    let stmt = client.prepare(sql).await.map_err(|err| {
        invalid(format!(
            "{what} SQL does not prepare: {}",
            db_error_text(&err)
        ))
    })?;
    if stmt.params().len() != params {
        return Err(invalid(format!(
            "{what} SQL takes {} parameters, expected {params} (one text[] per {})",
            stmt.params().len(),
            if params == e.def.key.len() {
                "key part"
            } else {
                "trigger column"
            }
        )));
    }
    if let Some((i, t)) = stmt
        .params()
        .iter()
        .enumerate()
        .find(|(_, t)| **t != Type::TEXT_ARRAY)
    {
        return Err(invalid(format!(
            "{what} SQL parameter ${} is {t}; write it as ${}::text[]",
            i + 1,
            i + 1
        )));
    }
    for col in required_columns {
        match stmt.columns().iter().find(|c| c.name() == *col) {
            None => return Err(invalid(format!("{what} SQL returns no column `{col}`"))),
            Some(c) if *c.type_() != Type::TEXT && *c.type_() != Type::VARCHAR => {
                return Err(invalid(format!(
                    "{what} SQL column `{col}` is {}; cast it to text ({col}::text)",
                    c.type_()
                )));
            }
            Some(_) => {}
        }
    }
    Ok(Named {
        entity: e.name.clone(),
        what: what.to_owned(),
        statement: stmt,
        params,
    })
}

/// Every column as text. The contract makes key and value columns text;
/// integer columns are extra context (e.g. a product id in a dead letter).
fn text_row(row: &Row) -> TextRow {
    row.columns()
        .iter()
        .enumerate()
        .map(|(i, col)| {
            let v = match *col.type_() {
                Type::INT2 => row
                    .try_get::<_, Option<i16>>(i)
                    .ok()
                    .flatten()
                    .map(|v| v.to_string()),
                Type::INT4 => row
                    .try_get::<_, Option<i32>>(i)
                    .ok()
                    .flatten()
                    .map(|v| v.to_string()),
                Type::INT8 => row
                    .try_get::<_, Option<i64>>(i)
                    .ok()
                    .flatten()
                    .map(|v| v.to_string()),
                _ => row.try_get::<_, Option<String>>(i).ok().flatten(),
            };
            (col.name().to_owned(), v)
        })
        .collect()
}
