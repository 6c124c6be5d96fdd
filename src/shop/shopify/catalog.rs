//! What the processors need to know about the shop's catalogue: SKU → variant,
//! product and inventory item; location names → ids.
//!
//! The SKU → variant mapping is kept in a [`CatalogStore`]: in the state
//! database, it is one mapping shared by every processor of the shop and kept
//! across restarts, which `products/*` webhooks keep current
//! (`sync::shop_catalog`). The first miss of a store that never held an
//! export (a first full sync, or a processor joining with a new state
//! database) exports the whole catalogue with one bulk query: a few points,
//! where looking up 10,000 SKUs one by one as they first change costs 30,000
//! and five minutes of the shop's budget, and a round trip on each first
//! write. The store remembers the export, so no other processor and no
//! restart repeats it; after it, a SKU the store lacks (created since) is
//! looked up in the shop and stored. A catalogue for one client's life
//! ([`ShopCatalog::in_memory`]: a trace of one key, a sampled
//! reconciliation) exports only for a miss of many SKUs at once: it would
//! read a whole catalogue to use a few entries of it.

use std::collections::HashMap;

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::admin_api::{AdminApi, AdminApiError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VariantRef {
    pub variant: String,
    pub product: String,
    pub inventory_item: String,
}

/// A [`CatalogStore`] failed.
#[derive(Debug, thiserror::Error)]
#[error("the catalogue mapping's store: {reason}")]
pub struct CatalogStoreError {
    pub reason: String,
    /// A server away, as opposed to a refused credential or a bad setting.
    pub retryable: bool,
}

/// Where a shop's SKU → variant mapping lives between lookups.
///
/// Contract:
/// - `load` returns the variant of each of `skus` the store knows. A SKU it
///   never saw, or knows as gone, is absent, and the caller looks it up in
///   the shop.
/// - `store` records what the shop said at `version` (Unix µs, taken before
///   the shop was read, less a margin for Shopify's whole-second stamps). It
///   never overwrites an entry stored with a newer version, so a slow lookup
///   cannot undo a `products/update` that came after it.
/// - `forget` takes these SKUs' variants away (a write found them gone from
///   the shop), unless an entry newer than `version` says otherwise; they
///   read as unknown until stored again.
/// - `exported` says whether `mark_exported` was ever called: the whole
///   catalogue is in the store, and a miss is not worth another export.
///   A store that forgets it only costs another export.
/// - An error says whether trying again may help; nothing is half-stored
///   that a retry would not store again.
pub trait CatalogStore: Send + Sync {
    fn load<'a>(
        &'a mut self,
        skus: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, VariantRef>, CatalogStoreError>>;
    fn store<'a>(
        &'a mut self,
        version: i64,
        variants: &'a [(String, VariantRef)],
    ) -> BoxFuture<'a, Result<(), CatalogStoreError>>;
    fn forget<'a>(
        &'a mut self,
        version: i64,
        skus: &'a [String],
    ) -> BoxFuture<'a, Result<(), CatalogStoreError>>;
    fn exported(&mut self) -> BoxFuture<'_, Result<bool, CatalogStoreError>>;
    fn mark_exported(&mut self) -> BoxFuture<'_, Result<(), CatalogStoreError>>;
}

/// A mapping for one client's life only (the reconciler's).
#[derive(Default)]
pub struct MemoryCatalog {
    variants: HashMap<String, (i64, VariantRef)>,
    exported: bool,
}

impl CatalogStore for MemoryCatalog {
    fn load<'a>(
        &'a mut self,
        skus: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, VariantRef>, CatalogStoreError>> {
        let found = skus
            .iter()
            .filter_map(|s| Some((s.clone(), self.variants.get(s)?.1.clone())))
            .collect();
        Box::pin(async move { Ok(found) })
    }

    fn store<'a>(
        &'a mut self,
        version: i64,
        variants: &'a [(String, VariantRef)],
    ) -> BoxFuture<'a, Result<(), CatalogStoreError>> {
        for (sku, v) in variants {
            let entry = self
                .variants
                .entry(sku.clone())
                .or_insert_with(|| (version, v.clone()));
            if entry.0 <= version {
                *entry = (version, v.clone());
            }
        }
        Box::pin(async { Ok(()) })
    }

    fn forget<'a>(
        &'a mut self,
        version: i64,
        skus: &'a [String],
    ) -> BoxFuture<'a, Result<(), CatalogStoreError>> {
        for sku in skus {
            if self.variants.get(sku).is_some_and(|e| e.0 <= version) {
                self.variants.remove(sku);
            }
        }
        Box::pin(async { Ok(()) })
    }

    fn exported(&mut self) -> BoxFuture<'_, Result<bool, CatalogStoreError>> {
        let exported = self.exported;
        Box::pin(async move { Ok(exported) })
    }

    fn mark_exported(&mut self) -> BoxFuture<'_, Result<(), CatalogStoreError>> {
        self.exported = true;
        Box::pin(async { Ok(()) })
    }
}

/// A Shopify GraphQL id: `gid("ProductVariant", "42")`.
pub fn gid(kind: &str, numeric: &str) -> String {
    format!("gid://shopify/{kind}/{numeric}")
}

/// How much older than our clock's time a read of the shop is versioned.
/// Shopify stamps a product's `updated_at` (the version of its `products/*`
/// webhooks) in whole seconds, by its own clock: a change made after a read
/// but in the same second carries a version up to a second older than the
/// read, and would be refused as older than what the read stored, leaving a
/// SKU mapped to the variant it left until the product changed again. The
/// other second allows for as much skew between the two clocks. A
/// webhook stamped inside the margin for a change made before the read only
/// writes what the shop held then; a later change has its own webhook, with
/// a version no older.
const READ_MARGIN_MICROS: i64 = 2_000_000;

/// The version of what the shop says from now on (Unix µs): now, less
/// [`READ_MARGIN_MICROS`]. Reads and forgets alike, so a lookup right after
/// a forget is not refused as older than it.
fn read_version() -> i64 {
    chrono::Utc::now().timestamp_micros() - READ_MARGIN_MICROS
}

/// Misses of at least this many SKUs in one lookup are read with an export
/// by a catalogue for one client's life too, and wait for it even when the
/// last one failed (looking them up would take the shop's budget for a
/// while); as many prices are read with one bulk query.
const EXPORT_FROM_MISSES: usize = 100;
/// After the shop failed an export, fewer misses are looked up one by one
/// for this long before an export is tried again, so a shop that refuses
/// bulk queries does not hold every first write for a failed export.
const EXPORT_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_secs(5 * 60);
/// How long an export may take (Shopify exports a large catalogue in minutes).
const EXPORT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(15 * 60);
/// The variants' fields the catalogue keeps, as one bulk query.
const EXPORT_QUERY: &str =
    "{ productVariants { edges { node { id sku product { id } inventoryItem { id } } } } }";

/// Every variant's prices, as one bulk query.
const PRICES_QUERY: &str = "{ productVariants { edges { node { sku price compareAtPrice } } } }";

pub struct ShopCatalog {
    pub api: AdminApi,
    store: Box<dyn CatalogStore>,
    locations: HashMap<String, String>,
    /// The store holds an export (it is never taken back, so once seen, the
    /// store need not be asked again).
    exported: bool,
    /// An export failed: until then, a few misses are looked up instead.
    export_paused_until: Option<std::time::Instant>,
    /// The store outlives this client, so the whole catalogue will be wanted:
    /// its first miss exports. Otherwise only a miss of many SKUs does.
    first_miss_exports: bool,
}

/// (SKU, variant) of a variant node with every field the mapping keeps.
fn variant_of(v: &Value) -> Option<(String, VariantRef)> {
    Some((
        v["sku"].as_str().filter(|s| !s.is_empty())?.to_owned(),
        VariantRef {
            variant: v["id"].as_str()?.to_owned(),
            product: v["product"]["id"].as_str()?.to_owned(),
            inventory_item: v["inventoryItem"]["id"].as_str()?.to_owned(),
        },
    ))
}

impl ShopCatalog {
    /// A catalogue whose SKU → variant mapping lives in `store`.
    pub fn new(api: AdminApi, store: Box<dyn CatalogStore>) -> Self {
        ShopCatalog {
            api,
            store,
            locations: HashMap::new(),
            exported: false,
            export_paused_until: None,
            first_miss_exports: true,
        }
    }

    /// A catalogue that keeps its mapping for its own life only: it exports
    /// the shop's catalogue for a miss of many SKUs at once, and looks a few
    /// up.
    pub fn in_memory(api: AdminApi) -> Self {
        ShopCatalog {
            first_miss_exports: false,
            ..ShopCatalog::new(api, Box::<MemoryCatalog>::default())
        }
    }

    /// Every variant of the shop, from one bulk export, into the store.
    async fn export(&mut self) -> Result<HashMap<String, VariantRef>, AdminApiError> {
        let version = read_version();
        let lines = super::bulk::run_query(&self.api, EXPORT_QUERY, EXPORT_PATIENCE).await?;
        let variants: Vec<(String, VariantRef)> = lines.iter().filter_map(variant_of).collect();
        self.store.store(version, &variants).await?;
        self.store.mark_exported().await?;
        self.exported = true;
        tracing::info!(
            variants = variants.len(),
            "exported the shop's catalogue in one bulk query"
        );
        Ok(variants.into_iter().collect())
    }

    /// The variant of each SKU the shop has; SKUs it lacks are absent.
    pub async fn variants<'a>(
        &mut self,
        skus: impl IntoIterator<Item = &'a str>,
    ) -> Result<HashMap<String, VariantRef>, AdminApiError> {
        let mut wanted: Vec<String> = skus.into_iter().map(str::to_owned).collect();
        wanted.sort();
        wanted.dedup();
        let mut known = self.store.load(&wanted).await?;
        let missing = |known: &HashMap<String, VariantRef>| -> Vec<&str> {
            wanted
                .iter()
                .map(String::as_str)
                .filter(|s| !known.contains_key(*s))
                .collect()
        };
        let misses = missing(&known).len();
        if self.wants_export(misses).await? {
            match self.export().await {
                Ok(all) => {
                    for s in &wanted {
                        if let Some(v) = all.get(s) {
                            known.entry(s.clone()).or_insert_with(|| v.clone());
                        }
                    }
                }
                // The store failing is not the shop refusing bulk queries:
                // the write is retried and exports then.
                Err(e @ AdminApiError::CatalogStore(_)) => return Err(e),
                Err(e) if misses < EXPORT_FROM_MISSES => {
                    tracing::warn!(
                        error = %e,
                        misses,
                        "could not export the shop's catalogue; looking the missing SKUs up one by one"
                    );
                    self.export_paused_until = Some(std::time::Instant::now() + EXPORT_RETRY_PAUSE);
                }
                Err(e) => return Err(e),
            }
        }
        // Still missing: created since the export, or not in the shop.
        let still = missing(&known);
        if !still.is_empty() {
            let version = read_version();
            let nodes = self
                .by_sku(&still, "id sku product { id } inventoryItem { id }", 3.0)
                .await?;
            let found: Vec<(String, VariantRef)> = nodes.iter().filter_map(variant_of).collect();
            self.store.store(version, &found).await?;
            for (sku, v) in found {
                known.entry(sku).or_insert(v);
            }
        }
        Ok(known)
    }

    /// Whether `misses` SKUs the store lacks are read with an export: when the
    /// store never held one, and they are many or the store lasts (and no
    /// export failed lately).
    async fn wants_export(&mut self, misses: usize) -> Result<bool, AdminApiError> {
        if misses == 0 || self.exported {
            return Ok(false);
        }
        let paused = self
            .export_paused_until
            .is_some_and(|until| std::time::Instant::now() < until);
        let few = misses < EXPORT_FROM_MISSES;
        if few && (paused || !self.first_miss_exports) {
            return Ok(false);
        }
        self.exported = self.store.exported().await?;
        Ok(!self.exported)
    }

    /// These SKUs' variants are gone from the shop (a write was refused for
    /// an unknown item): they are looked up again when next wanted.
    async fn forget(&mut self, skus: &[&str]) -> Result<(), AdminApiError> {
        let skus: Vec<String> = skus.iter().map(|s| s.to_string()).collect();
        tracing::info!(
            ?skus,
            "the shop no longer has the mapped variants; looking them up again"
        );
        Ok(self.store.forget(read_version(), &skus).await?)
    }

    /// [`forget`](Self::forget)s these SKUs and reads their variants from the
    /// shop itself, never the store: a stale `products/*` webhook stamped
    /// within the read margin can store the gone mapping again in between,
    /// and a write retried through the store would find it gone once more.
    /// What the shop says is stored too, under the store's version guard (an
    /// entry from a webhook stamped within the read margin stays); SKUs the
    /// shop lacks are absent.
    pub async fn look_up_again(
        &mut self,
        skus: &[&str],
    ) -> Result<HashMap<String, VariantRef>, AdminApiError> {
        self.forget(skus).await?;
        let version = read_version();
        let nodes = self
            .by_sku(skus, "id sku product { id } inventoryItem { id }", 3.0)
            .await?;
        let found: Vec<(String, VariantRef)> = nodes.iter().filter_map(variant_of).collect();
        self.store.store(version, &found).await?;
        Ok(found.into_iter().collect())
    }

    /// The shop's current (price, compare-at price) of each SKU, read now (not
    /// cached: a merchant may have edited prices). Scalar fields cost nothing,
    /// so this costs about one point per SKU, a tenth of a mutation; as many
    /// SKUs as would make an export are read with one bulk query instead.
    pub async fn current_prices(
        &self,
        skus: &[&str],
    ) -> Result<HashMap<String, (Option<String>, Option<String>)>, AdminApiError> {
        let nodes = if skus.len() >= EXPORT_FROM_MISSES {
            let wanted: std::collections::HashSet<&str> = skus.iter().copied().collect();
            let mut all = super::bulk::run_query(&self.api, PRICES_QUERY, EXPORT_PATIENCE).await?;
            all.retain(|v| v["sku"].as_str().is_some_and(|s| wanted.contains(s)));
            all
        } else {
            self.by_sku(skus, "sku price compareAtPrice", 1.0).await?
        };
        let mut out = HashMap::new();
        for v in nodes {
            if let Some(sku) = v["sku"].as_str() {
                let text = |f: &str| v[f].as_str().map(str::to_owned);
                out.insert(sku.to_owned(), (text("price"), text("compareAtPrice")));
            }
        }
        Ok(out)
    }

    /// The shop's variants with these SKUs (`fields` of each), 50 per query;
    /// `points_per_node` is the requested cost of one node's fields.
    async fn by_sku(
        &self,
        skus: &[&str],
        fields: &str,
        points_per_node: f64,
    ) -> Result<Vec<Value>, AdminApiError> {
        let mut nodes = Vec::new();
        for chunk in skus.chunks(50) {
            let filter = chunk
                .iter()
                .map(|s| format!("sku:'{s}'"))
                .collect::<Vec<_>>()
                .join(" OR ");
            // The requested cost counts `first` nodes: ask for no more than
            // are wanted, or a lookup of one SKU reserves the cost of 50.
            let first = chunk.len();
            let r = self
                .api
                .execute(
                    &format!(
                        "query($q: String) {{ productVariants(first: {first}, query: $q) {{ nodes {{ {fields} }} }} }}"
                    ),
                    json!({"q": filter}),
                    2.0 + first as f64 * points_per_node,
                )
                .await?;
            if let Some(found) = r.data["productVariants"]["nodes"].as_array() {
                nodes.extend(found.iter().cloned());
            }
        }
        Ok(nodes)
    }

    /// The id of the location named `name`.
    pub async fn location(&mut self, name: &str) -> Result<Option<String>, AdminApiError> {
        if !self.locations.contains_key(name) {
            let r = self
                .api
                .execute(
                    "{ locations(first: 250) { nodes { id name } } }",
                    Value::Null,
                    252.0,
                )
                .await?;
            for l in r.data["locations"]["nodes"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if let (Some(id), Some(n)) = (l["id"].as_str(), l["name"].as_str()) {
                    self.locations.insert(n.to_owned(), id.to_owned());
                }
            }
        }
        Ok(self.locations.get(name).cloned())
    }
}
