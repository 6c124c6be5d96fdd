//! Bulk operations, as Shopify runs them, in the background and outside the
//! cost limit; `currentBulkOperation(type:)` reports each kind's newest
//! operation and, once `COMPLETED`, the `url` of its JSONL result.
//!
//! - Queries (`bulkOperationRunQuery`): a query over a whole connection (no
//!   `first`/`after`: every node). The file has one line per node of every
//!   connection, a nested connection's nodes on their own lines after their
//!   parent, naming it in `__parentId`.
//! - Mutations (`bulkOperationRunMutation`): one mutation, run once per line
//!   of a JSONL file of variables uploaded beforehand (`stagedUploadsCreate`,
//!   then a multipart POST to the staged target, at most
//!   [`MAX_UPLOAD_BYTES`]). The file has one line per input line:
//!   `{"data": …, "__lineNumber": n}` (with `errors` when it had any).
//!
//! One operation of each kind runs at a time per shop (Shopify's limit before
//! API version 2026-01); a query and a mutation may run together.
//!
//! Operations run through the shop's own schema (`graphql`), so they see every
//! field the simulator has; [`BULK`] lifts the page limit while they run.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::graphql::ShopSchema;

tokio::task_local! {
    /// Set while a bulk query runs: connections return every node.
    pub static BULK: bool;
}

/// Whether the running task executes a bulk query.
pub fn in_bulk() -> bool {
    BULK.try_with(|b| *b).unwrap_or(false)
}

/// Shopify's limit on a bulk mutation's variables file.
pub const MAX_UPLOAD_BYTES: usize = 100 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Query,
    Mutation,
}

impl OpKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Query => "QUERY",
            OpKind::Mutation => "MUTATION",
        }
    }
}

#[derive(Clone, Debug)]
pub struct BulkOp {
    pub id: u64,
    pub kind: OpKind,
    /// The query, or the mutation run once per line.
    pub query: String,
    /// A mutation's variables file (`stagedUploadsCreate`'s key).
    pub staged_path: Option<String>,
    /// CREATED, RUNNING, COMPLETED or FAILED.
    pub status: &'static str,
    pub error_code: Option<String>,
    pub object_count: u64,
    pub root_object_count: u64,
    pub file_size: Option<u64>,
    pub created_at: String,
    pub completed_at: Option<String>,
}

impl BulkOp {
    pub fn running(&self) -> bool {
        matches!(self.status, "CREATED" | "RUNNING")
    }
}

/// The shop's bulk operations and their result files.
pub struct BulkOps {
    ops: Mutex<Vec<BulkOp>>,
    files: Mutex<HashMap<u64, Arc<String>>>,
    /// Staged uploads by key: `None` until the file arrives.
    uploads: Mutex<HashMap<String, Option<Arc<String>>>>,
    jobs: mpsc::UnboundedSender<u64>,
    base_url: Mutex<String>,
    latency: Mutex<std::time::Duration>,
    /// Every operation ends FAILED (fault injection).
    failing: std::sync::atomic::AtomicBool,
}

impl BulkOps {
    /// The operations, and the receiver the runner ([`run`]) takes jobs from.
    pub fn new() -> (BulkOps, mpsc::UnboundedReceiver<u64>) {
        let (jobs, rx) = mpsc::unbounded_channel();
        let ops = BulkOps {
            ops: Mutex::default(),
            files: Mutex::default(),
            uploads: Mutex::default(),
            jobs,
            base_url: Mutex::default(),
            latency: Mutex::default(),
            failing: Default::default(),
        };
        (ops, rx)
    }

    /// How long each operation runs before its result is ready (fault injection).
    pub fn set_latency(&self, latency: std::time::Duration) {
        *self.latency.lock() = latency;
    }

    /// Whether every operation ends FAILED, as Shopify's now and then do
    /// (fault injection).
    pub fn set_failing(&self, failing: bool) {
        self.failing
            .store(failing, std::sync::atomic::Ordering::Relaxed);
    }

    /// Where result files are served (`http://host:port`).
    pub fn set_base_url(&self, base: String) {
        *self.base_url.lock() = base;
    }

    pub fn url(&self, id: u64) -> String {
        format!("{}/_sim/bulk/{id}.jsonl", self.base_url.lock())
    }

    /// How many operations were started.
    pub fn started(&self) -> usize {
        self.ops.lock().len()
    }

    /// Where staged uploads are posted.
    pub fn upload_url(&self) -> String {
        format!("{}/_sim/staged-uploads", self.base_url.lock())
    }

    /// Reserves a staged upload's key (`stagedUploadsCreate`).
    pub fn stage(&self, key: String) {
        self.uploads.lock().insert(key, None);
    }

    /// Stores an upload's file under its staged key; `false` for a key never
    /// staged.
    pub fn store_upload(&self, key: &str, text: String) -> bool {
        match self.uploads.lock().get_mut(key) {
            Some(slot) => {
                *slot = Some(Arc::new(text));
                true
            }
            None => false,
        }
    }

    /// The file uploaded under `key`, if it arrived.
    pub fn upload(&self, key: &str) -> Option<Arc<String>> {
        self.uploads.lock().get(key).cloned().flatten()
    }

    /// Operation `id`.
    pub fn get(&self, id: u64) -> Option<BulkOp> {
        self.ops.lock().iter().find(|o| o.id == id).cloned()
    }

    /// The newest operation of `kind`.
    pub fn current(&self, kind: OpKind) -> Option<BulkOp> {
        self.ops
            .lock()
            .iter()
            .rev()
            .find(|o| o.kind == kind)
            .cloned()
    }

    /// Starts operation `id` (a query, or a mutation over the file staged at
    /// `staged_path`); `Err` is the id of the running one of its kind.
    pub fn start(
        &self,
        id: u64,
        kind: OpKind,
        query: String,
        staged_path: Option<String>,
        now: String,
    ) -> Result<BulkOp, u64> {
        let mut ops = self.ops.lock();
        if let Some(running) = ops.iter().find(|o| o.kind == kind && o.running()) {
            return Err(running.id);
        }
        let op = BulkOp {
            id,
            kind,
            query,
            staged_path,
            status: "CREATED",
            error_code: None,
            object_count: 0,
            root_object_count: 0,
            file_size: None,
            created_at: now,
            completed_at: None,
        };
        ops.push(op.clone());
        // The runner lives as long as the server; if it is gone, so is the shop.
        let _ = self.jobs.send(id);
        Ok(op)
    }

    pub fn file(&self, id: u64) -> Option<Arc<String>> {
        self.files.lock().get(&id).cloned()
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut BulkOp)) {
        if let Some(op) = self.ops.lock().iter_mut().find(|o| o.id == id) {
            f(op);
        }
    }
}

/// Runs each started operation through `schema` until the server stops.
pub async fn run(
    schema: ShopSchema,
    bulk: Arc<BulkOps>,
    mut jobs: mpsc::UnboundedReceiver<u64>,
    now: fn() -> String,
) {
    while let Some(id) = jobs.recv().await {
        let Some(op) = bulk.ops.lock().iter().find(|o| o.id == id).cloned() else {
            continue;
        };
        bulk.update(id, |o| o.status = "RUNNING");
        let latency = *bulk.latency.lock();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let result = match op.kind {
            _ if bulk.failing.load(std::sync::atomic::Ordering::Relaxed) => {
                Err("injected failure".to_owned())
            }
            OpKind::Query => run_query(&schema, &op.query).await,
            OpKind::Mutation => {
                let file = op.staged_path.as_deref().and_then(|p| bulk.upload(p));
                match file {
                    Some(file) => Ok(run_mutation(&schema, &op.query, &file).await),
                    None => Err("the staged file is gone".to_owned()),
                }
            }
        };
        match result {
            Ok(out) => {
                let size = out.text.len() as u64;
                bulk.files.lock().insert(id, Arc::new(out.text));
                bulk.update(id, |o| {
                    o.status = "COMPLETED";
                    o.object_count = out.objects;
                    o.root_object_count = out.roots;
                    o.file_size = Some(size);
                    o.completed_at = Some(now());
                });
            }
            Err(reason) => {
                tracing::warn!(id, %reason, "bulk operation failed");
                bulk.update(id, |o| {
                    o.status = "FAILED";
                    o.error_code = Some("INTERNAL_SERVER_ERROR".into());
                    o.completed_at = Some(now());
                });
            }
        }
    }
}

async fn run_query(schema: &ShopSchema, query: &str) -> Result<Jsonl, String> {
    let response = BULK
        .scope(true, schema.execute(async_graphql::Request::new(query)))
        .await;
    if !response.errors.is_empty() {
        return Err(format!("{:?}", response.errors));
    }
    to_jsonl(&serde_json::to_value(&response.data).unwrap_or(Value::Null))
}

/// Runs `mutation` once per line of `variables`; a line's errors go into its
/// result line, as Shopify reports them, and do not stop the others.
async fn run_mutation(schema: &ShopSchema, mutation: &str, variables: &str) -> Jsonl {
    let mut out = Jsonl {
        text: String::new(),
        objects: 0,
        roots: 0,
    };
    for (n, line) in variables.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut result = serde_json::Map::new();
        match serde_json::from_str::<Value>(line) {
            Ok(vars) => {
                let request = async_graphql::Request::new(mutation)
                    .variables(async_graphql::Variables::from_json(vars));
                let response = BULK.scope(true, schema.execute(request)).await;
                result.insert(
                    "data".into(),
                    serde_json::to_value(&response.data).unwrap_or(Value::Null),
                );
                if !response.errors.is_empty() {
                    result.insert(
                        "errors".into(),
                        serde_json::to_value(&response.errors).unwrap_or(Value::Null),
                    );
                }
            }
            Err(e) => {
                result.insert(
                    "errors".into(),
                    serde_json::json!([{"message": format!("line is not JSON: {e}")}]),
                );
            }
        }
        result.insert("__lineNumber".into(), Value::from(n));
        out.text.push_str(&Value::Object(result).to_string());
        out.text.push('\n');
        out.objects += 1;
        out.roots += 1;
    }
    out
}

/// A bulk query's result as JSONL.
#[derive(Debug, PartialEq)]
pub struct Jsonl {
    pub text: String,
    pub objects: u64,
    pub roots: u64,
}

/// Flattens a query's data into Shopify's bulk JSONL: the root connection's
/// nodes each on a line, each followed by the nodes of the connections nested
/// in it, which name the nearest enclosing node in `__parentId`.
pub fn to_jsonl(data: &Value) -> Result<Jsonl, String> {
    let root = data
        .as_object()
        .and_then(|o| o.values().find_map(connection_nodes))
        .ok_or("a bulk query must select a connection at its root")?;
    let mut out = Jsonl {
        text: String::new(),
        objects: 0,
        roots: root.len() as u64,
    };
    for node in root {
        emit(node, None, &mut out);
    }
    Ok(out)
}

fn emit(node: &Value, parent: Option<&Value>, out: &mut Jsonl) {
    let mut line = node.clone();
    let mut children = Vec::new();
    take_connections(&mut line, &mut children);
    if let (Some(o), Some(p)) = (line.as_object_mut(), parent) {
        o.insert("__parentId".into(), p.clone());
    }
    out.text.push_str(&line.to_string());
    out.text.push('\n');
    out.objects += 1;
    let id = node.get("id");
    for child in &children {
        emit(child, id.or(parent), out);
    }
}

/// Removes every connection nested in `v` (through plain objects) and
/// collects its nodes.
fn take_connections(v: &mut Value, into: &mut Vec<Value>) {
    let Some(o) = v.as_object_mut() else {
        return;
    };
    let keys: Vec<String> = o.keys().cloned().collect();
    for k in keys {
        let Some(field) = o.get_mut(&k) else {
            continue;
        };
        if let Some(nodes) = connection_nodes(field) {
            into.extend(nodes.into_iter().cloned());
            o.remove(&k);
        } else {
            take_connections(field, into);
        }
    }
}

/// The nodes of a connection (`edges { node }` or `nodes`); `None` for
/// anything else.
fn connection_nodes(v: &Value) -> Option<Vec<&Value>> {
    let o: &Map<String, Value> = v.as_object()?;
    if let Some(edges) = o.get("edges").and_then(Value::as_array) {
        return Some(edges.iter().filter_map(|e| e.get("node")).collect());
    }
    o.get("nodes")
        .and_then(Value::as_array)
        .map(|n| n.iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_connections_become_lines_after_their_parent() {
        let data = json!({"productVariants": {"edges": [
            {"node": {"id": "V1", "sku": "A", "inventoryItem": {"id": "I1",
                "inventoryLevels": {"edges": [
                    {"node": {"id": "L1", "quantities": [{"name": "on_hand", "quantity": 3}]}},
                    {"node": {"id": "L2", "quantities": []}}
                ]}}}},
            {"node": {"id": "V2", "sku": "B", "inventoryItem": {"id": "I2",
                "inventoryLevels": {"nodes": []}}}}
        ]}});
        let out = to_jsonl(&data).expect("a connection at the root");
        let lines: Vec<Value> = out
            .text
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect();
        assert_eq!(
            lines,
            vec![
                json!({"id": "V1", "sku": "A", "inventoryItem": {"id": "I1"}}),
                json!({"id": "L1", "quantities": [{"name": "on_hand", "quantity": 3}], "__parentId": "V1"}),
                json!({"id": "L2", "quantities": [], "__parentId": "V1"}),
                json!({"id": "V2", "sku": "B", "inventoryItem": {"id": "I2"}}),
            ]
        );
        assert_eq!((out.objects, out.roots), (4, 2));
    }

    #[test]
    fn a_query_without_a_root_connection_is_refused() {
        assert!(to_jsonl(&json!({"shop": {"name": "x"}})).is_err());
    }
}
