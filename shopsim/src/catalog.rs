//! The demo catalogue: the same SKUs and warehouse names as Flywheel's demo ERP
//! (`flywheel::erp::demo_erp`), so the two sides match without configuration.
//! A test in the flywheel crate checks the two stay in step.

use crate::state::Seed;

/// The SKU of demo product `i` (1-based).
pub fn sku(i: u32) -> String {
    format!("SKU-{i:06}")
}

/// The location standing for demo warehouse `i` (1-based), named like its code.
pub fn location_name(i: u32) -> String {
    format!("WH{i}")
}

/// `skus` products with one variant each, stocked with 0 at `locations` locations.
pub fn demo_seed(skus: u32, locations: u32) -> Seed {
    Seed {
        products: (1..=skus)
            .map(|i| {
                (
                    sku(i),
                    format!("{}.{:02}", 5 + (i * 37) % 195, (i * 13) % 100),
                )
            })
            .collect(),
        locations: (1..=locations.max(1)).map(location_name).collect(),
        initial_available: 0,
    }
}

/// A seed from a JSON file: `{"products": [["SKU", "9.99"], …], "locations": […], "initial_available": 0}`.
pub fn seed_from_file(path: &std::path::Path) -> Result<Seed, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a shopsim seed: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_seed_matches_the_erp_naming() {
        let s = demo_seed(10_000, 3);
        assert_eq!(s.products.len(), 10_000);
        assert_eq!(s.products[0].0, "SKU-000001");
        assert_eq!(s.products[9_999].0, "SKU-010000");
        assert_eq!(s.locations, vec!["WH1", "WH2", "WH3"]);
    }
}
