//! Bulk operations: Shopify runs them in the background, outside the cost
//! budget, and serves the result as a JSONL file.
//!
//! - A query (`bulkOperationRunQuery`) over a whole connection: one line per
//!   node; a nested connection's nodes on their own lines after their parent,
//!   naming it in `__parentId`. Reading a whole catalogue costs a few points
//!   instead of several per item.
//! - A mutation (`bulkOperationRunMutation`) run once per line of a JSONL file
//!   of variables, uploaded first to a staged target (`stagedUploadsCreate`):
//!   one result line per input line, naming it in `__lineNumber`. Writing
//!   thousands of prices costs a few points instead of ten per product.
//!
//! One operation of each kind runs at a time per app and shop (before API
//! version 2026-01): when another is running (a second reconciliation, another
//! processor exporting the catalogue), this waits for it to end — and takes a
//! query's file when it was the same query — or starts again, within its
//! patience.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::admin_api::{AdminApi, AdminApiError};

/// First and longest pause between two looks at a running operation.
const POLL_FIRST: Duration = Duration::from_millis(200);
const POLL_MAX: Duration = Duration::from_secs(5);
/// What is read of an operation while waiting for it.
const STATUS_FIELDS: &str = "id status errorCode objectCount url query";
/// Shopify's limit on a bulk mutation's variables file.
pub const MAX_VARIABLES_BYTES: usize = 100 * 1024 * 1024;

#[derive(Clone, Copy)]
enum Kind {
    Query,
    Mutation,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Query => "QUERY",
            Kind::Mutation => "MUTATION",
        }
    }
}

/// Runs `query` as a bulk query and returns its result lines, parsed, in the
/// file's order. Fails with `Unavailable` (transient) when it did not finish
/// within `patience`, and with `GraphQl` (final) when Shopify refused the
/// query or the operation failed.
pub async fn run_query(
    api: &AdminApi,
    query: &str,
    patience: Duration,
) -> Result<Vec<Value>, AdminApiError> {
    let deadline = Instant::now() + patience;
    let request = "mutation($q: String!) { bulkOperationRunQuery(query: $q) { bulkOperation { id status } userErrors { field message code } } }";
    // The same export run by another processor of this shop: its file is
    // ours too.
    let same = |other: &Value| other["query"].as_str() == Some(query);
    let done = run_to_end(
        api,
        Kind::Query,
        request,
        json!({"q": query}),
        deadline,
        same,
    )
    .await?;
    result_lines(api, &done).await
}

/// Runs `mutation` once per entry of `variables` as a bulk mutation and
/// returns each entry's result (`{"data": …}`, with `errors` when it had
/// any), in the order of `variables`; `Null` for an entry Shopify did not
/// report. Errors as [`run_query`]'s; a refused upload is final.
pub async fn run_mutation(
    api: &AdminApi,
    mutation: &str,
    variables: &[Value],
    patience: Duration,
) -> Result<Vec<Value>, AdminApiError> {
    let deadline = Instant::now() + patience;
    let mut file = String::new();
    for v in variables {
        file.push_str(&v.to_string());
        file.push('\n');
    }
    if file.len() > MAX_VARIABLES_BYTES {
        return Err(AdminApiError::GraphQl(format!(
            "a bulk mutation's variables are {} bytes, over Shopify's {MAX_VARIABLES_BYTES}; write fewer at once",
            file.len()
        )));
    }
    let path = stage(api, &file).await?;
    let request = "mutation($m: String!, $p: String!) { bulkOperationRunMutation(mutation: $m, stagedUploadPath: $p) { bulkOperation { id status } userErrors { field message code } } }";
    let vars = json!({"m": mutation, "p": path});
    let done = run_to_end(api, Kind::Mutation, request, vars, deadline, |_| false).await?;
    let mut out = vec![Value::Null; variables.len()];
    for line in result_lines(api, &done).await? {
        if let Some(slot) = line["__lineNumber"]
            .as_u64()
            .and_then(|n| out.get_mut(usize::try_from(n).ok()?))
        {
            *slot = line;
        }
    }
    Ok(out)
}

/// Uploads a bulk mutation's variables; returns the staged path that names
/// them to `bulkOperationRunMutation`.
async fn stage(api: &AdminApi, file: &str) -> Result<String, AdminApiError> {
    const FILENAME: &str = "variables.jsonl";
    let r = api
        .execute(
            "mutation($i: [StagedUploadInput!]!) { stagedUploadsCreate(input: $i) { stagedTargets { url parameters { name value } } userErrors { field message } } }",
            json!({"i": [{"resource": "BULK_MUTATION_VARIABLES", "filename": FILENAME,
                          "mimeType": "text/jsonl", "httpMethod": "POST"}]}),
            10.0,
        )
        .await?;
    let payload = &r.data["stagedUploadsCreate"];
    if let Some(errors) = payload["userErrors"].as_array().filter(|e| !e.is_empty()) {
        return Err(AdminApiError::GraphQl(format!(
            "the shop refused to stage an upload: {}",
            Value::Array(errors.clone())
        )));
    }
    let target = &payload["stagedTargets"][0];
    let url = target["url"].as_str();
    let parameters: Vec<(String, String)> = target["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_owned(),
                p["value"].as_str()?.to_owned(),
            ))
        })
        .collect();
    let key = parameters
        .iter()
        .find(|(n, _)| n == "key")
        .map(|(_, v)| v.clone());
    let (Some(url), Some(key)) = (url, key) else {
        return Err(AdminApiError::Protocol(format!(
            "stagedUploadsCreate answered no url or key: {payload}"
        )));
    };
    api.upload_staged(url, &parameters, FILENAME, file).await?;
    Ok(key)
}

/// A finished operation's result lines; a failed operation is final.
async fn result_lines(api: &AdminApi, done: &Value) -> Result<Vec<Value>, AdminApiError> {
    let id = &done["id"];
    match done["status"].as_str() {
        Some("COMPLETED") => {}
        status => {
            return Err(AdminApiError::GraphQl(format!(
                "bulk operation {id} ended {} (errorCode {})",
                status.unwrap_or("without a status"),
                done["errorCode"]
            )));
        }
    }
    // No file when nothing matched.
    let Some(url) = done["url"].as_str() else {
        return Ok(Vec::new());
    };
    let text = api.download(url).await?;
    parse_jsonl(&text)
}

enum Started {
    Id(String),
    /// Another operation of this kind is running (Shopify's words).
    Busy(String),
}

/// Starts an operation of `kind` (`request`, with `variables`) and waits for
/// it to end. While another of the app's of that kind runs, waits for that one
/// first — and takes it as ours when `shares_result` says it did our work.
async fn run_to_end(
    api: &AdminApi,
    kind: Kind,
    request: &str,
    variables: Value,
    deadline: Instant,
    shares_result: impl Fn(&Value) -> bool,
) -> Result<Value, AdminApiError> {
    loop {
        match start(api, kind, request, variables.clone()).await? {
            Started::Id(id) => return wait_while_running(api, kind, Some(&id), deadline).await,
            Started::Busy(message) => {
                tracing::info!(%message, kind = kind.as_str(), "another bulk operation of this app is running; waiting for it");
                let other = wait_while_running(api, kind, None, deadline).await?;
                if other["status"] == "COMPLETED" && shares_result(&other) {
                    return Ok(other);
                }
            }
        }
    }
}

/// Sends a `bulkOperationRun*` mutation and reads its answer.
async fn start(
    api: &AdminApi,
    kind: Kind,
    request: &str,
    variables: Value,
) -> Result<Started, AdminApiError> {
    let field = match kind {
        Kind::Query => "bulkOperationRunQuery",
        Kind::Mutation => "bulkOperationRunMutation",
    };
    let r = api.execute(request, variables, 10.0).await?;
    let payload = &r.data[field];
    let errors = payload["userErrors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if let Some(e) = errors.first() {
        let message = e["message"].as_str().unwrap_or_default().to_owned();
        return if e["code"] == "OPERATION_IN_PROGRESS" {
            Ok(Started::Busy(message))
        } else {
            Err(AdminApiError::GraphQl(format!(
                "the shop refused the bulk operation: {}",
                Value::Array(errors)
            )))
        };
    }
    payload["bulkOperation"]["id"]
        .as_str()
        .map(|id| Started::Id(id.to_owned()))
        .ok_or_else(|| AdminApiError::Protocol(format!("{field} answered no operation: {payload}")))
}

/// Looks at a bulk operation (backing off) until it is not running: ours
/// by its id, or else the app's current one of `kind`. Returns its last state.
async fn wait_while_running(
    api: &AdminApi,
    kind: Kind,
    ours: Option<&str>,
    deadline: Instant,
) -> Result<Value, AdminApiError> {
    let mut pause = POLL_FIRST;
    loop {
        let op = match ours {
            // By id: once ours is done another client may start the next
            // one, and then the current operation is no longer ours.
            Some(id) => {
                let by_id = api
                    .execute(
                        &format!(
                            "query($id: ID!) {{ bulkOperation(id: $id) {{ {STATUS_FIELDS} }} }}"
                        ),
                        json!({"id": id}),
                        1.0,
                    )
                    .await;
                match by_id {
                    Ok(r) => r.data["bulkOperation"].clone(),
                    // API versions before 2026-01 have no `bulkOperation(id:)`:
                    // the current operation is ours until another client
                    // starts the next one, which it can only once ours ended;
                    // its result is then out of reach, and the caller's retry
                    // runs it again.
                    Err(AdminApiError::GraphQl(_)) => {
                        let op = current(api, kind).await?;
                        if op["id"].as_str() != Some(id) {
                            return Err(AdminApiError::Unavailable {
                                attempts: 1,
                                last: format!(
                                    "bulk operation {id} ended and another client started {}; run it again",
                                    op["id"]
                                ),
                            });
                        }
                        op
                    }
                    Err(e) => return Err(e),
                }
            }
            None => current(api, kind).await?,
        };
        if let (Some(id), true) = (ours, op.is_null()) {
            return Err(AdminApiError::Unavailable {
                attempts: 1,
                last: format!("bulk operation {id} is unknown to the shop; run it again"),
            });
        }
        let running = matches!(
            op["status"].as_str(),
            Some("CREATED" | "RUNNING" | "CANCELING")
        );
        if !running {
            return Ok(op);
        }
        if Instant::now() + pause > deadline {
            return Err(AdminApiError::Unavailable {
                attempts: 1,
                last: format!(
                    "bulk operation {} still {} when patience ran out",
                    op["id"], op["status"]
                ),
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(POLL_MAX);
    }
}

/// The app's newest bulk operation of `kind`.
async fn current(api: &AdminApi, kind: Kind) -> Result<Value, AdminApiError> {
    let r = api
        .execute(
            &format!(
                "query {{ currentBulkOperation(type: {}) {{ {STATUS_FIELDS} }} }}",
                kind.as_str()
            ),
            Value::Null,
            1.0,
        )
        .await?;
    Ok(r.data["currentBulkOperation"].clone())
}

/// One JSON value per non-empty line; a line that is not JSON is the file
/// being wrong, never skipped.
fn parse_jsonl(text: &str) -> Result<Vec<Value>, AdminApiError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| {
            serde_json::from_str(l)
                .map_err(|e| AdminApiError::Protocol(format!("bulk result line {}: {e}", n + 1)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_is_one_value_and_a_bad_line_is_an_error() {
        let lines = parse_jsonl("{\"id\":\"a\"}\n\n{\"id\":\"b\",\"__parentId\":\"a\"}\n")
            .expect("two lines");
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["__parentId"], "a");
        let err = parse_jsonl("{\"id\":\"a\"}\n{oops\n").expect_err("a broken line");
        assert!(err.to_string().contains("line 2"), "{err}");
    }
}
