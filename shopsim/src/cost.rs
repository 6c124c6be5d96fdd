//! Shopify's calculated query cost and leaky bucket.
//!
//! Requested cost is computed from the query before it runs: scalars and enums
//! 0, objects 1, connections 2 + `first`/`last` × the cost of one node, mutation
//! fields 10. Actual cost is computed the same way from the response (real list
//! lengths). The bucket must hold the requested cost; the difference to the
//! actual cost is refunded after execution.

use std::collections::HashMap;
use std::time::Instant;

use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationType, Selection, SelectionSet,
};

use serde_json::Value;

pub const MUTATION_COST: u64 = 10;
/// A connection without `first`/`last` (Shopify rejects those; we assume this).
const DEFAULT_PAGE: u64 = 10;
/// Wrapper fields of a connection that cost nothing by themselves.
const CONNECTION_WRAPPERS: &[&str] = &["edges", "node", "nodes", "pageInfo"];

/// The requested cost of `doc`'s operation (`operation_name` or the only one).
pub fn requested_cost(
    doc: &ExecutableDocument,
    operation_name: Option<&str>,
    variables: &Value,
) -> u64 {
    let op = match (&doc.operations, operation_name) {
        (DocumentOperations::Single(op), _) => Some(op),
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name),
        (DocumentOperations::Multiple(ops), None) => ops.values().next(),
    };
    let Some(op) = op else { return 0 };
    let fragments: HashMap<&str, &SelectionSet> = doc
        .fragments
        .iter()
        .map(|(name, f)| (name.as_str(), &f.node.selection_set.node))
        .collect();
    let calc = Calc {
        fragments,
        variables,
    };
    let is_mutation = op.node.ty == OperationType::Mutation;
    calc.items(&op.node.selection_set.node)
        .iter()
        .map(|f| {
            if is_mutation {
                MUTATION_COST
            } else {
                calc.field(f)
            }
        })
        .sum()
}

struct Calc<'a> {
    fragments: HashMap<&'a str, &'a SelectionSet>,
    variables: &'a Value,
}

type Field = async_graphql::parser::types::Field;

impl<'a> Calc<'a> {
    /// The fields of a selection set, with fragments inlined.
    fn items(&self, set: &'a SelectionSet) -> Vec<&'a Field> {
        let mut out = Vec::new();
        for sel in &set.items {
            match &sel.node {
                Selection::Field(f) => out.push(&f.node),
                Selection::InlineFragment(frag) => {
                    out.extend(self.items(&frag.node.selection_set.node))
                }
                Selection::FragmentSpread(spread) => {
                    if let Some(set) = self.fragments.get(spread.node.fragment_name.node.as_str()) {
                        out.extend(self.items(set));
                    }
                }
            }
        }
        out
    }

    fn page_size(&self, f: &Field) -> Option<u64> {
        let arg = f.get_argument("first").or_else(|| f.get_argument("last"))?;
        let v = arg.node.clone().into_const_with(|name| {
            Ok::<_, ()>(
                async_graphql::Value::from_json(
                    self.variables
                        .get(name.as_str())
                        .cloned()
                        .unwrap_or(Value::Null),
                )
                .unwrap_or(async_graphql::Value::Null),
            )
        });
        match v {
            Ok(async_graphql::Value::Number(n)) => n.as_u64(),
            _ => Some(DEFAULT_PAGE),
        }
    }

    fn field(&self, f: &'a Field) -> u64 {
        let children = self.items(&f.selection_set.node);
        if children.is_empty() {
            return 0; // scalar or enum
        }
        let inner: u64 = children.iter().map(|c| self.field(c)).sum();
        if let Some(n) = self.page_size(f) {
            // A connection: one node object plus its fields, per requested item.
            let per_node: u64 = children
                .iter()
                .filter(|c| {
                    CONNECTION_WRAPPERS.contains(&c.name.node.as_str()) && c.name.node != "pageInfo"
                })
                .map(|c| self.node_cost(c))
                .max()
                .unwrap_or(1);
            2 + n * per_node
        } else if CONNECTION_WRAPPERS.contains(&f.name.node.as_str()) {
            inner
        } else {
            1 + inner
        }
    }

    /// Cost of one node under `edges { node { … } }` or `nodes { … }`.
    fn node_cost(&self, wrapper: &'a Field) -> u64 {
        match wrapper.name.node.as_str() {
            "edges" => self
                .items(&wrapper.selection_set.node)
                .iter()
                .find(|c| c.name.node == "node")
                .map_or(0, |node| 1 + self.children_cost(node)),
            _ => 1 + self.children_cost(wrapper),
        }
    }

    fn children_cost(&self, f: &'a Field) -> u64 {
        self.items(&f.selection_set.node)
            .iter()
            .map(|c| self.field(c))
            .sum()
    }
}

/// The actual cost of a response's `data` (real list lengths).
pub fn actual_cost(data: &Value, is_mutation: bool) -> u64 {
    fn cost(v: &Value) -> u64 {
        match v {
            Value::Object(map) => {
                let connection = map.contains_key("edges") || map.contains_key("nodes");
                let own = if connection { 2 } else { 1 };
                own + map
                    .iter()
                    .map(|(k, v)| match (k.as_str(), v) {
                        ("pageInfo", _) => 0,
                        ("edges", Value::Array(items)) => {
                            items.iter().map(|e| e.get("node").map_or(0, cost)).sum()
                        }
                        _ => cost(v),
                    })
                    .sum::<u64>()
            }
            Value::Array(items) => items.iter().map(cost).sum(),
            _ => 0,
        }
    }
    match data {
        Value::Object(top) if is_mutation => top.len() as u64 * MUTATION_COST,
        Value::Object(top) => top.values().map(cost).sum(),
        _ => 0,
    }
}

/// A leaky bucket of cost points (or requests), restoring continuously.
#[derive(Debug)]
pub struct LeakyBucket {
    pub capacity: f64,
    pub restore_per_second: f64,
    available: f64,
    last: Instant,
}

impl LeakyBucket {
    pub fn new(capacity: f64, restore_per_second: f64) -> Self {
        LeakyBucket {
            capacity,
            restore_per_second,
            available: capacity,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let secs = now.saturating_duration_since(self.last).as_secs_f64();
        self.available = (self.available + secs * self.restore_per_second).min(self.capacity);
        self.last = now;
    }

    pub fn available_at(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.available
    }

    /// Takes `cost` if the bucket holds it; otherwise leaves it untouched and
    /// returns how many seconds until it would.
    pub fn try_take_at(&mut self, cost: f64, now: Instant) -> Result<(), f64> {
        self.refill(now);
        if cost <= self.available {
            self.available -= cost;
            Ok(())
        } else {
            Err((cost - self.available) / self.restore_per_second)
        }
    }

    pub fn refund(&mut self, points: f64) {
        self.available = (self.available + points).min(self.capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cost_of(q: &str, vars: Value) -> u64 {
        let doc = async_graphql::parser::parse_query(q).unwrap();
        requested_cost(&doc, None, &vars)
    }

    #[test]
    fn scalars_objects_connections_mutations() {
        assert_eq!(cost_of("{ shop { name } }", Value::Null), 1);
        // 2 + 10 × (node 1 + inventoryItem 1)
        assert_eq!(
            cost_of(
                "{ productVariants(first: 10) { nodes { id sku inventoryItem { id } } pageInfo { hasNextPage } } }",
                Value::Null
            ),
            22
        );
        // edges/node form and a variable page size: 2 + 50 × 1
        assert_eq!(
            cost_of(
                "query($n: Int) { productVariants(first: $n) { edges { cursor node { id } } } }",
                serde_json::json!({"n": 50})
            ),
            52
        );
        // nested connection: 2 + 5 × (1 + (2 + 3 × 1))
        assert_eq!(
            cost_of(
                "{ locations(first: 5) { nodes { inventoryLevels(first: 3) { nodes { id } } } } }",
                Value::Null
            ),
            32
        );
        assert_eq!(
            cost_of(
                "mutation { a: orderCancel(orderId: \"x\") { userErrors { message } } }",
                Value::Null
            ),
            MUTATION_COST
        );
        // fragments are followed
        assert_eq!(
            cost_of(
                "{ shop { ...F } } fragment F on Shop { name billingAddress { city } }",
                Value::Null
            ),
            2
        );
    }

    #[test]
    fn actual_cost_counts_what_came_back() {
        let data = serde_json::json!({"productVariants": {"nodes": [{"id": "1"}, {"id": "2"}], "pageInfo": {"hasNextPage": false}}});
        assert_eq!(actual_cost(&data, false), 2 + 2);
        assert_eq!(
            actual_cost(&serde_json::json!({"m": {}}), true),
            MUTATION_COST
        );
    }

    #[test]
    fn bucket_drains_restores_and_refuses_with_the_wait() {
        let t0 = Instant::now();
        let mut b = LeakyBucket::new(1000.0, 100.0);
        b.try_take_at(900.0, t0).unwrap();
        assert_eq!(b.available_at(t0), 100.0);
        let wait = b.try_take_at(300.0, t0).unwrap_err();
        assert!((wait - 2.0).abs() < 1e-9, "{wait}");
        // After 2 s, 200 more points: now 300 are there.
        b.try_take_at(300.0, t0 + Duration::from_secs(2)).unwrap();
        assert_eq!(b.available_at(t0 + Duration::from_secs(2)), 0.0);
        // Never above capacity.
        assert_eq!(b.available_at(t0 + Duration::from_secs(100)), 1000.0);
        b.refund(50.0);
        assert_eq!(b.available_at(t0 + Duration::from_secs(100)), 1000.0);
    }
}
