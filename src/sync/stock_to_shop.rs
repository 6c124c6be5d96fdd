//! `erp.stock.v1` → the shop's inventory.
//!
//! ## The stock contract
//!
//! Flywheel sets the shop's **`on_hand`**, never its `available`:
//!
//! ```text
//! shop on_hand = max(0, ERP on_hand − (ERP reserved − reserved for this shop's orders) − safety_stock)
//! shop available = shop on_hand − shop committed          (the shop keeps this itself)
//! ```
//!
//! A sale in the shop moves units from `available` to `committed` at once and
//! leaves `on_hand` alone, so no write of ours can put a sold unit back on sale
//! (the race of writing `available`: an ERP event between the sale and the
//! ERP learning of the order re-wrote the pre-sale number). Once the ERP has
//! the order it reserves it *for this shop's channel*, which the formula adds
//! back, because the shop's `committed` already holds it: never subtracted
//! twice. Other channels' and the ERP's own reservations are subtracted.
//!
//! Writes go out through the platform (`shop::platform::StockLevelPlatform`:
//! Shopify's `inventorySetQuantities`), ≤ 250 per call, with an idempotency
//! key derived from the whole input and a compare from the last known
//! `on_hand`: cached, or the last confirmed write (`sync::state`), or none for
//! a level never written. A stale compare is
//! normal concurrency (a fulfilment moved `on_hand`): re-read, retry with
//! backoff; a level still moving after that is handed back to the apply loop
//! as contended and retried after the rest of the batch. SKUs the shop lacks
//! are dead letters.

use std::collections::{BTreeMap, HashMap, HashSet};

use tokio_util::sync::CancellationToken;

use super::Lane;
use super::apply_loop::{self, Applier, Decoded, Outcome, Pending, SyncError};
use super::shop_catalog::StoredCatalog;
use super::state::StateDb;
use crate::bus::avro::{field, field_i64, field_str};
use crate::bus::topics::ERP_STOCK;
use crate::config::{Config, ShopConfig};
use crate::shop::platform::{OnHandWrite, SetOnHand, StockLevelPlatform};
use crate::shop::shopify::inventory::ShopifyInventory;

#[derive(Clone, Debug)]
pub struct StockLevel {
    pub sku: String,
    pub warehouse: String,
    /// Whole units the ERP has in this warehouse; 0 for a deleted entity.
    pub on_hand: i64,
    /// Whole units the ERP holds back for anything but this shop's own
    /// orders (which the shop holds back itself, as `committed`).
    pub reserved_elsewhere: i64,
    /// Whole units the ERP holds back for this shop's own orders.
    pub reserved_own: i64,
}

impl StockLevel {
    /// The shop's `on_hand` under the stock contract (module doc).
    pub fn shop_on_hand(&self, safety_stock: i64) -> i64 {
        (self.on_hand - self.reserved_elsewhere - safety_stock).max(0)
    }
}

/// A decimal string as whole units, rounded toward zero; `None` if it is not a number.
fn units(decimal: &str) -> Option<i64> {
    let v = decimal.trim().parse::<f64>().ok()?;
    v.is_finite().then(|| v.trunc() as i64)
}

/// (`reserved − reserved_by_channel[channel]`, `reserved_by_channel[channel]`)
/// in whole units (rounded up: a fraction held back is not sellable).
fn reservations(reserved: &str, by_channel: Option<&str>, channel: &str) -> Option<(i64, i64)> {
    let total = reserved.trim().parse::<f64>().ok()?;
    let own = match by_channel {
        None => 0.0,
        Some(json) => {
            let map: HashMap<String, String> = serde_json::from_str(json).ok()?;
            match map.get(channel) {
                Some(q) => q.trim().parse::<f64>().ok()?,
                None => 0.0,
            }
        }
    };
    let own = own.clamp(0.0, total.max(0.0));
    let elsewhere = (total - own).max(0.0);
    (elsewhere.is_finite() && own.is_finite()).then(|| (elsewhere.ceil() as i64, own.ceil() as i64))
}

/// An `erp.stock.v1` record as the stock of `channel`'s shop; `None` for a
/// record without the fields (dead-lettered by the apply loop).
pub fn decode(v: &apache_avro::types::Value, channel: &str) -> Option<Decoded<StockLevel>> {
    let deleted = matches!(
        field(v, "deleted"),
        Some(apache_avro::types::Value::Boolean(true))
    );
    // Decimal strings; the shop counts whole units. A connector without
    // on_hand/reserved sends `available` alone: all of it is sellable.
    let (on_hand, (reserved_elsewhere, reserved_own)) = if deleted {
        (0, (0, 0))
    } else {
        match (field_str(v, "on_hand"), field_str(v, "reserved")) {
            (Some(on_hand), Some(reserved)) => (
                units(on_hand)?,
                reservations(reserved, field_str(v, "reserved_by_channel"), channel)?,
            ),
            _ => (units(field_str(v, "available")?)?, (0, 0)),
        }
    };
    Some(Decoded {
        key: field_str(v, "key")?.to_owned(),
        version: (field_i64(v, "version")?, String::new()),
        source_ts_micros: field_i64(v, "source_ts")?,
        event: StockLevel {
            sku: field_str(v, "sku")?.to_owned(),
            warehouse: field_str(v, "warehouse")?.to_owned(),
            on_hand,
            reserved_elsewhere,
            reserved_own,
        },
    })
}

pub struct StockToShop<P> {
    platform: P,
    /// This shop's channel: its own orders' reservations are not subtracted.
    channel: String,
    /// Flywheel's state database: what was written, to recognise echoes.
    state: StateDb,
    safety_stock: i64,
    warehouse_locations: BTreeMap<String, String>,
    /// (item, location) → last known on_hand
    levels: HashMap<(String, String), i64>,
    /// Location → the warehouse whose stock it shows: a second warehouse
    /// resolving to it is refused (an unlisted warehouse goes to the location
    /// of its own name, which the configuration cannot check alone).
    location_warehouse: HashMap<String, String>,
}

/// Runs the stock processor of `shop` until `shutdown`: this module's on
/// Shopify, `sync::stock_count_to_shop` on a platform keeping one count per SKU.
pub async fn run(
    config: &Config,
    shop: &ShopConfig,
    shutdown: CancellationToken,
) -> Result<(), SyncError> {
    if shop.platform == crate::config::Platform::Woocommerce {
        return super::stock_count_to_shop::run(config, shop, shutdown).await;
    }
    let lane = Lane::for_shop(ENTITY, ERP_STOCK, &shop.name);
    apply_loop::supervised(config, lane, shutdown, || async {
        let state = StateDb::connect(config).await?;
        let catalog = StoredCatalog::for_shop(config, shop, ENTITY).await?;
        Ok(StockToShop {
            state,
            platform: ShopifyInventory { catalog },
            channel: shop.name.clone(),
            safety_stock: shop.safety_stock,
            warehouse_locations: shop.warehouse_locations.clone(),
            levels: HashMap::new(),
            location_warehouse: HashMap::new(),
        })
    })
    .await
}

/// The entity of every stock processor, whatever the platform.
pub const ENTITY: &str = "stock";

impl<P> Applier for StockToShop<P>
where
    P: StockLevelPlatform,
    SyncError: From<P::Error>,
{
    const ENTITY: &'static str = ENTITY;
    const TOPIC: &'static str = ERP_STOCK;
    type Event = StockLevel;

    fn ready_in(&self) -> std::time::Duration {
        self.platform.ready_in()
    }

    fn decode(&self, v: &apache_avro::types::Value) -> Option<Decoded<StockLevel>> {
        decode(v, &self.channel)
    }

    async fn apply(&mut self, events: &[Pending<StockLevel>]) -> Result<Vec<Outcome>, SyncError> {
        let skus: Vec<&str> = events.iter().map(|e| e.event.sku.as_str()).collect();
        let items = self.platform.items(&skus).await?;
        let mut outcomes = Vec::with_capacity(events.len());
        let mut writes = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let Some(item) = items.get(&e.event.sku) else {
                outcomes.push(Outcome::DeadLetter {
                    class: "unknown_sku",
                    reason: format!("the shop has no variant with SKU `{}`", e.event.sku),
                });
                continue;
            };
            let name = self
                .warehouse_locations
                .get(&e.event.warehouse)
                .cloned()
                .unwrap_or_else(|| e.event.warehouse.clone());
            let location =
                self.platform
                    .location(&name)
                    .await?
                    .ok_or_else(|| SyncError::UnknownLocation {
                        warehouse: e.event.warehouse.clone(),
                        location: name.clone(),
                    })?;
            match self.location_warehouse.get(&location) {
                Some(first) if *first != e.event.warehouse => {
                    return Err(SyncError::SharedLocation {
                        first: first.clone(),
                        second: e.event.warehouse.clone(),
                        location: name,
                    });
                }
                Some(_) => {}
                None => {
                    self.location_warehouse
                        .insert(location.clone(), e.event.warehouse.clone());
                }
            }
            outcomes.push(Outcome::Applied);
            let quantity = e.event.shop_on_hand(self.safety_stock);
            writes.push((i, item.clone(), location, quantity));
        }
        // SKU → the item the shop has now, for levels refused as gone.
        let mut found_again: HashMap<String, Option<String>> = HashMap::new();
        for chunk in writes.chunks(250) {
            let keyed: Vec<Write> = chunk
                .iter()
                .map(|(i, item, loc, q)| (&events[*i], item.as_str(), loc.as_str(), *q))
                .collect();
            let mut settled = HashSet::new();
            if self.set_quantities(&keyed, &mut settled).await? == SetOutcome::Done {
                continue;
            }
            // Level by level, so one hot or refused level does not hold the
            // others back; the call is all or nothing. A level the call above
            // settled is not written again: one found at its target would be
            // set a second time (after a crash: the dead worker's request,
            // which landed after all).
            for (w, (i, ..)) in keyed.iter().zip(chunk) {
                if settled.contains(&(w.1.to_owned(), w.2.to_owned())) {
                    continue;
                }
                let sku = events[*i].event.sku.as_str();
                if let Some(found) = found_again.get(sku).cloned() {
                    // Another warehouse of this SKU found its item gone.
                    outcomes[*i] = self.write_to_found(w, found, &mut settled).await?;
                    continue;
                }
                let set = self
                    .set_quantities(std::slice::from_ref(w), &mut settled)
                    .await?;
                outcomes[*i] = match set {
                    // Mapped before the variant was replaced in the shop: read
                    // from the shop anew, not from the mapping (which a stale
                    // `products/*` webhook may have filled with the gone item
                    // again), and written to the item it has now, right away.
                    SetOutcome::UnknownItem => {
                        let found = self.platform.look_up_again(&[sku]).await?.remove(sku);
                        found_again.insert(sku.to_owned(), found.clone());
                        self.write_to_found(w, found, &mut settled).await?
                    }
                    other => level_outcome(other),
                };
            }
        }
        Ok(outcomes)
    }
}

/// What a level's event became, from its own `set_quantities` call.
fn level_outcome(set: SetOutcome) -> Outcome {
    match set {
        SetOutcome::Done => Outcome::Applied,
        SetOutcome::Contended => Outcome::Contended,
        // Still gone after a fresh lookup (replaced once more in between):
        // the event goes again, and looks up again.
        SetOutcome::UnknownItem => Outcome::Contended,
        SetOutcome::Refused(reason) => Outcome::DeadLetter {
            class: "shop_refused",
            reason,
        },
    }
}

/// One level to write: (event, inventory item, location, on_hand).
type Write<'a> = (&'a Pending<StockLevel>, &'a str, &'a str, i64);

/// What became of one `inventorySetQuantities` call.
#[derive(Debug, PartialEq, Eq)]
enum SetOutcome {
    Done,
    /// The levels kept moving under us through every attempt.
    Contended,
    /// An inventory item is not in the shop (any more).
    UnknownItem,
    /// The shop refused the input (e.g. an item not stocked at the location).
    Refused(String),
}

/// Attempts of one call while the shop reports stale compares, and the first
/// backoff (doubling, with jitter).
const STALE_ATTEMPTS: u32 = 4;
const STALE_BACKOFF: std::time::Duration = std::time::Duration::from_millis(25);

impl<P> StockToShop<P>
where
    P: StockLevelPlatform,
    SyncError: From<P::Error>,
{
    /// Reads the current `on_hand` of (item, location) pairs into the cache.
    /// A level the shop does not report is left out (written without a compare).
    async fn read_levels(&mut self, pairs: &[(String, String)]) -> Result<(), SyncError> {
        if pairs.is_empty() {
            return Ok(());
        }
        let read = self.platform.on_hand(pairs).await?;
        for pair in pairs {
            match read.get(pair) {
                Some(q) => {
                    self.levels.insert(pair.clone(), *q);
                }
                None => {
                    self.levels.remove(pair);
                }
            }
        }
        Ok(())
    }

    /// One platform call (≤ 250 levels) of `on_hand`, compare-and-set. Adds
    /// to `settled` the levels it leaves alone, whatever the outcome of the
    /// call: those known to be at their target, and those written at a newer
    /// version.
    async fn set_quantities(
        &mut self,
        chunk: &[Write<'_>],
        settled: &mut HashSet<(String, String)>,
    ) -> Result<SetOutcome, SyncError> {
        let pairs: Vec<(String, String)> = chunk
            .iter()
            .map(|(_, i, l, _)| (i.to_string(), l.to_string()))
            .collect();
        // A level last written, or about to be written, at a newer version
        // than this event's is left alone: a worker that died before its
        // versions and offsets were stored may have set the newer value, and
        // the replay, batched differently, brings the older version first
        // (writing it would put an old number back on sale until the newer
        // came again). The newer event is replayed after this one.
        //
        // Otherwise, what we know of each level: the cache, else our record
        // of the last write. A write confirmed at this very version already
        // landed (the crash came before the version store was updated): skip
        // it. An unconfirmed one may or may not have landed: read the shop. A
        // level never written is set without a compare (nothing is known of it).
        let written = self.state.load_levels(&self.channel, &pairs).await?;
        let mut uncertain: Vec<(String, String)> = Vec::new();
        let mut skip = HashSet::new();
        for ((e, .., qty), pair) in chunk.iter().zip(&pairs) {
            if written.get(pair).is_some_and(|w| w.version > e.version.0) {
                skip.insert(pair.clone());
                continue;
            }
            if self.levels.contains_key(pair) {
                continue;
            }
            match written.get(pair) {
                Some(w) if w.confirmed && w.version == e.version.0 && w.quantity == *qty => {
                    skip.insert(pair.clone());
                }
                Some(w) if w.confirmed => {
                    self.levels.insert(pair.clone(), w.quantity);
                }
                Some(_) => uncertain.push(pair.clone()),
                None => {}
            }
        }
        self.read_levels(&uncertain).await?;
        let mut todo: Vec<(Write, (String, String))> = chunk
            .iter()
            .zip(pairs)
            .filter(|(_, pair)| !skip.contains(pair))
            .map(|(c, p)| (*c, p))
            .collect();
        settled.extend(skip);
        self.drop_levels_at_target(&mut todo, &uncertain, settled);
        if todo.is_empty() {
            return Ok(SetOutcome::Done);
        }
        // Recorded before writing: the shop's webhook for this write may arrive
        // before the answer does, and must already be recognised as our echo.
        let levels: Vec<(&str, &str, i64, i64)> = todo
            .iter()
            .map(|((e, i, l, q), _)| (*i, *l, *q, e.version.0))
            .collect();
        self.state.intend_levels(&self.channel, &levels).await?;
        for attempt in 0..STALE_ATTEMPTS {
            let compare: Vec<Option<i64>> = todo
                .iter()
                .map(|(_, pair)| self.levels.get(pair).copied())
                .collect();
            let writes: Vec<OnHandWrite> = todo
                .iter()
                .zip(&compare)
                .map(|(((_, item, loc, qty), _), from)| OnHandWrite {
                    item: item.to_string(),
                    location: loc.to_string(),
                    on_hand: *qty,
                    compare: *from,
                })
                .collect();
            match self
                .platform
                .set_on_hand(&writes, &idempotency_key(&todo, &compare))
                .await?
            {
                SetOnHand::Done => {
                    for ((.., qty), pair) in &todo {
                        self.levels.insert(pair.clone(), *qty);
                    }
                    self.state.confirm_levels(&self.channel, &levels).await?;
                    return Ok(SetOutcome::Done);
                }
                SetOnHand::Refused(reason) => return Ok(SetOutcome::Refused(reason)),
                SetOnHand::UnknownItem => return Ok(SetOutcome::UnknownItem),
                // Normal concurrency: something (a fulfilment, a person in the
                // shop admin, our own request sent before a crash) moved on_hand
                // since we last looked.
                SetOnHand::Stale => tracing::debug!(
                    attempt,
                    levels = todo.len(),
                    "on_hand moved under us; re-reading"
                ),
                // The same request, sent by a worker that died before its
                // answer came, is still being processed: once it lands, the
                // re-read shows its levels at target and they are dropped.
                SetOnHand::InProgress => tracing::debug!(
                    attempt,
                    levels = todo.len(),
                    "the same request is still in progress at the shop; re-reading"
                ),
            }
            let backoff = STALE_BACKOFF * 2u32.pow(attempt);
            tokio::time::sleep(backoff + backoff.mul_f64(fastrand::f64())).await;
            let read: Vec<(String, String)> = todo.iter().map(|(_, p)| p.clone()).collect();
            self.read_levels(&read).await?;
            self.drop_levels_at_target(&mut todo, &read, settled);
            if todo.is_empty() {
                self.state.confirm_levels(&self.channel, &levels).await?;
                return Ok(SetOutcome::Done);
            }
        }
        Ok(SetOutcome::Contended)
    }

    /// A level refused for an unknown item, written to the item its SKU has
    /// in the shop now (`found`, from `look_up_again`).
    async fn write_to_found(
        &mut self,
        (event, gone, location, quantity): &Write<'_>,
        found: Option<String>,
        settled: &mut HashSet<(String, String)>,
    ) -> Result<Outcome, SyncError> {
        let sku = event.event.sku.as_str();
        let Some(item) = found else {
            return Ok(Outcome::DeadLetter {
                class: "unknown_sku",
                reason: format!("the shop has no variant with SKU `{sku}` any more"),
            });
        };
        if item == *gone {
            return Ok(Outcome::Contended);
        }
        let write: Write = (*event, item.as_str(), *location, *quantity);
        let set = self
            .set_quantities(std::slice::from_ref(&write), settled)
            .await?;
        Ok(level_outcome(set))
    }

    /// Drops the levels just read (`fresh`) that the shop already shows at
    /// their target: writing them changes nothing, and re-sending our own
    /// request that landed after all (one in flight when the previous worker
    /// died, or one whose answer was lost) would apply it twice.
    fn drop_levels_at_target(
        &self,
        todo: &mut Vec<(Write, (String, String))>,
        fresh: &[(String, String)],
        settled: &mut HashSet<(String, String)>,
    ) {
        todo.retain(|((.., qty), pair)| {
            let at_target = fresh.contains(pair) && self.levels.get(pair) == Some(qty);
            if at_target {
                settled.insert(pair.clone());
            }
            !at_target
        });
    }
}

/// The key covers the whole input — keys, versions, target quantities and
/// the compare values — so only a true re-send of the same request is
/// answered from the shop's record. After a restart the same event is sent
/// with the compare values read anew; under a key of keys and versions alone
/// the shop answered it with the earlier success and applied nothing, leaving
/// a fulfilment that came in between counted twice.
fn idempotency_key(todo: &[(Write, (String, String))], compare: &[Option<i64>]) -> String {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    for (((e, _, _, qty), _), from) in todo.iter().zip(compare) {
        (&e.key, &e.version, qty, from).hash(&mut h);
    }
    format!("flywheel-stock-{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_other_channels_reservations_are_held_back() {
        // 10 on hand, 4 reserved of which 3 for this shop's own orders: the
        // shop's committed holds those 3, so on_hand = 10 − 1.
        let own = Some(r#"{"demo": "3.000", "other": "1.000"}"#);
        assert_eq!(reservations("4.000", own, "demo"), Some((1, 3)));
        assert_eq!(reservations("4.000", own, "outlet"), Some((4, 0)));
        assert_eq!(reservations("4", None, "demo"), Some((4, 0)));
        // A fraction held back is not sellable.
        assert_eq!(
            reservations("2.5", Some(r#"{"demo":"1"}"#), "demo"),
            Some((2, 1))
        );
        // A channel never holds more than the total.
        assert_eq!(
            reservations("1", Some(r#"{"demo":"3"}"#), "demo"),
            Some((0, 1))
        );
        // Bytes from outside that are not what we expect are refused, not guessed.
        assert_eq!(reservations("x", None, "demo"), None);
        assert_eq!(reservations("1", Some("not json"), "demo"), None);
        assert_eq!(units("7.9"), Some(7));
        assert_eq!(units("NaN"), None);
    }

    #[test]
    fn safety_stock_applies_and_nothing_goes_below_zero() {
        let level = StockLevel {
            sku: "S".into(),
            warehouse: "WH1".into(),
            on_hand: 10,
            reserved_elsewhere: 1,
            reserved_own: 0,
        };
        assert_eq!(level.shop_on_hand(0), 9);
        assert_eq!(level.shop_on_hand(2), 7);
        assert_eq!(level.shop_on_hand(20), 0);
    }
}
