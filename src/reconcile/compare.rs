//! The comparison itself, pure: what the ERP says a shop should show (after
//! the processors' mapping) against what the shop shows, key by key.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

/// One key whose shop value differs from the ERP's, both as text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Drifted {
    pub key: String,
    pub erp: String,
    pub shop: String,
}

/// The outcome for one shop and one entity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EntityReport {
    pub shop: String,
    pub entity: String,
    /// Keys the ERP has that concern this shop.
    pub compared: usize,
    pub in_sync: usize,
    pub drifted: Vec<Drifted>,
    /// Keys the shop cannot hold (a SKU it lacks, a level not stocked at its
    /// location): the processors dead-letter them; no write can fix them.
    pub missing_in_shop: Vec<String>,
    /// Keys the shop has that the ERP lacks (orders it never took).
    pub missing_in_erp: Vec<String>,
    /// Drifted keys whose ERP event was produced again (`--repair`).
    pub repaired: usize,
}

impl EntityReport {
    pub fn is_in_sync(&self) -> bool {
        self.drifted.is_empty() && self.missing_in_shop.is_empty() && self.missing_in_erp.is_empty()
    }
}

/// Compares `expected` (key → what the shop should show) with `shown` (key →
/// what it shows; a key absent is one the shop cannot hold).
pub fn diff<V>(
    shop: &str,
    entity: &str,
    expected: &BTreeMap<String, V>,
    shown: &HashMap<String, V>,
    same: impl Fn(&V, &V) -> bool,
    text: impl Fn(&V) -> String,
) -> EntityReport {
    let mut report = EntityReport {
        shop: shop.to_owned(),
        entity: entity.to_owned(),
        compared: expected.len(),
        ..EntityReport::default()
    };
    for (key, want) in expected {
        match shown.get(key) {
            None => report.missing_in_shop.push(key.clone()),
            Some(have) if same(want, have) => report.in_sync += 1,
            Some(have) => report.drifted.push(Drifted {
                key: key.clone(),
                erp: text(want),
                shop: text(have),
            }),
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_exactly_the_keys_that_differ_or_are_missing() {
        let expected: BTreeMap<String, i64> = [("a", 1), ("b", 2), ("c", 3)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let shown: HashMap<String, i64> = [("a", 1), ("b", 5), ("z", 9)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let r = diff(
            "s",
            "stock",
            &expected,
            &shown,
            |a, b| a == b,
            |v| v.to_string(),
        );
        assert_eq!(r.compared, 3);
        assert_eq!(r.in_sync, 1);
        assert_eq!(
            r.drifted,
            vec![Drifted {
                key: "b".into(),
                erp: "2".into(),
                shop: "5".into()
            }]
        );
        assert_eq!(r.missing_in_shop, vec!["c".to_owned()]);
        assert!(!r.is_in_sync());
    }

    #[test]
    fn equal_by_the_given_rule_is_in_sync() {
        let expected: BTreeMap<String, String> = [("a".to_owned(), "50".to_owned())].into();
        let shown: HashMap<String, String> = [("a".to_owned(), "50.00".to_owned())].into();
        let r = diff(
            "s",
            "price",
            &expected,
            &shown,
            |a, b| a.parse::<f64>().ok() == b.parse::<f64>().ok(),
            Clone::clone,
        );
        assert!(r.is_in_sync());
        assert_eq!(r.in_sync, 1);
    }
}
