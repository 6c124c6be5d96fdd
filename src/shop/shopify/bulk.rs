//! Bulk queries (`bulkOperationRunQuery`): Shopify runs a query over a whole
//! connection in the background, outside the cost budget, and serves the
//! result as a JSONL file — one line per node; a nested connection's nodes on
//! their own lines after their parent, naming it in `__parentId`. For reading
//! a whole catalogue this costs a few points instead of several per item.
//!
//! One bulk query runs at a time per app and shop: when another is running
//! (a second reconciliation, another processor exporting the catalogue), this
//! waits for it to end — and takes its file when it was the same query — or
//! starts again, within its patience.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::admin_api::{AdminApi, AdminApiError};

/// First and longest pause between two looks at a running operation.
const POLL_FIRST: Duration = Duration::from_millis(200);
const POLL_MAX: Duration = Duration::from_secs(5);

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
    let done = loop {
        match start(api, query).await? {
            Started::Id(id) => break wait_while_running(api, Some(&id), deadline).await?,
            Started::Busy(message) => {
                tracing::info!(%message, "another bulk query of this app is running; waiting for it");
                let other = wait_while_running(api, None, deadline).await?;
                // The same export (another processor of this shop): its file
                // is ours too.
                if other["query"].as_str() == Some(query) && other["status"] == "COMPLETED" {
                    break other;
                }
            }
        }
    };
    let id = done["id"].clone();
    match done["status"].as_str() {
        Some("COMPLETED") => {}
        status => {
            return Err(AdminApiError::GraphQl(format!(
                "bulk query {id} ended {} (errorCode {})",
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
    /// Another bulk query of this app is running (Shopify's words).
    Busy(String),
}

async fn start(api: &AdminApi, query: &str) -> Result<Started, AdminApiError> {
    let r = api
        .execute(
            "mutation($q: String!) { bulkOperationRunQuery(query: $q) { bulkOperation { id status } userErrors { field message code } } }",
            json!({"q": query}),
            10.0,
        )
        .await?;
    let payload = &r.data["bulkOperationRunQuery"];
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
                "the shop refused the bulk query: {}",
                Value::Array(errors)
            )))
        };
    }
    payload["bulkOperation"]["id"]
        .as_str()
        .map(|id| Started::Id(id.to_owned()))
        .ok_or_else(|| {
            AdminApiError::Protocol(format!(
                "bulkOperationRunQuery answered no operation: {payload}"
            ))
        })
}

/// Looks at the app's current bulk query (backing off) until it is not
/// running; with `ours`, until ours is not. Returns its last state.
async fn wait_while_running(
    api: &AdminApi,
    ours: Option<&str>,
    deadline: Instant,
) -> Result<Value, AdminApiError> {
    let mut pause = POLL_FIRST;
    loop {
        let r = api
            .execute(
                "query { currentBulkOperation(type: QUERY) { id status errorCode objectCount url query } }",
                Value::Null,
                1.0,
            )
            .await?;
        let op = r.data["currentBulkOperation"].clone();
        let running = matches!(
            op["status"].as_str(),
            Some("CREATED" | "RUNNING" | "CANCELING")
        );
        match ours {
            Some(id) if op["id"].as_str() != Some(id) => {
                return Err(AdminApiError::GraphQl(format!(
                    "bulk query {id} is no longer the app's current one (another client started {}); run it again",
                    op["id"]
                )));
            }
            _ if !running => return Ok(op),
            _ => {}
        }
        if Instant::now() + pause > deadline {
            return Err(AdminApiError::Unavailable {
                attempts: 1,
                last: format!(
                    "bulk query {} still {} when patience ran out",
                    op["id"], op["status"]
                ),
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(POLL_MAX);
    }
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
