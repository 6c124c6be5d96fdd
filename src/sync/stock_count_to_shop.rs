//! `erp.stock.v1` → a shop that keeps one stock count per SKU and lowers it
//! itself when it sells (`shop::platform::StockCountPlatform`: WooCommerce).
//!
//! ## The count
//!
//! ```text
//! count = max(0, Σ sellable − Σ own_reserved − safety_stock − held)
//!   sellable     = ERP on_hand − ERP reserved for anything but this shop's orders
//!   own_reserved = ERP reserved for this shop's orders
//!   Σ            = over the warehouses the shop is stocked from
//!                  (`warehouse_locations`' keys; every warehouse when empty)
//! ```
//!
//! Events arrive per (SKU, warehouse); the ERP's latest stock of each — of
//! every warehouse, since the ERP may fill this shop's orders from any — is
//! kept in the state database (version-guarded, so a replay cannot lower it)
//! and summed per SKU. A new consumer group must therefore read the (compacted)
//! topic from the start once (`new_group_start = "earliest"`, the default) to
//! know every pair; one starting at the end counts the pairs it sees.
//!
//! `held` closes the race of writing a count a sale already lowered: the shop
//! takes a sold unit off its count at once, but the ERP reserves it only when
//! the order reaches it, and an ERP event in between would put the unit back
//! on sale. So before writing, the shop's count is read: units it lost since
//! our last write are sales the ERP has not reserved yet (`held` grows), and
//! the growth of this shop's reservations in the ERP since then, in any
//! warehouse, are those sales arriving (`held` shrinks). Held units are released after
//! `HOLD_LIMIT` at the latest — by then the order reached the ERP (or the
//! merchant lowered the count by hand, and the ERP's number is the truth),
//! so an undercount cannot last.
//!
//! A count the shop already shows is not written (`unchanged`), so a replay
//! writes nothing. Writes are recorded as intended before they are sent and
//! confirmed after; after a crash an unconfirmed write is not taken as the
//! base of the sales arithmetic. SKUs the shop lacks are dead letters naming
//! the shop.

use std::collections::BTreeMap;

use tokio_util::sync::CancellationToken;

use super::Lane;
use super::apply_loop::{self, Applier, Decoded, Outcome, Pending, SyncError};
use super::state::{CountWritten, StateDb, StockPart};
use super::stock_to_shop::{self, StockLevel};
use crate::bus::topics::ERP_STOCK;
use crate::config::{Config, ShopConfig};
use crate::shop::platform::StockCountPlatform;
use crate::shop::woocommerce::WooClient;

/// The longest time units sold in the shop are held back waiting for the ERP
/// to reserve them.
pub const HOLD_LIMIT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

pub struct StockCountToShop<P> {
    platform: P,
    /// The shop's name: its channel, its rows in the state database.
    shop: String,
    state: StateDb,
    safety_stock: i64,
    /// The warehouses the shop is stocked from; empty: all.
    warehouses: Vec<String>,
}

/// Runs the stock processor of `shop` (a WooCommerce shop) until `shutdown`.
pub async fn run(
    config: &Config,
    shop: &ShopConfig,
    shutdown: CancellationToken,
) -> Result<(), SyncError> {
    let lane = Lane::for_shop(stock_to_shop::ENTITY, ERP_STOCK, &shop.name);
    if config.processors.new_group_start == crate::config::GroupStart::Latest {
        tracing::warn!(
            shop = %shop.name,
            "processors.new_group_start = \"latest\": a new group of this shop's stock counts only the (SKU, warehouse) pairs it sees change; \"earliest\" reads every pair once"
        );
    }
    apply_loop::supervised(config, lane, shutdown, || async {
        Ok(StockCountToShop {
            platform: WooClient::for_shop(shop, stock_to_shop::ENTITY)?,
            shop: shop.name.clone(),
            state: StateDb::connect(config).await?,
            safety_stock: shop.safety_stock,
            warehouses: shop.warehouse_locations.keys().cloned().collect(),
        })
    })
    .await
}

/// What the ERP says of one SKU now: summed over the shop's warehouses, and
/// this shop's reservations over all of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErpStock {
    pub sellable: i64,
    pub own_reserved: i64,
    pub own_reserved_anywhere: i64,
}

impl ErpStock {
    /// Sums `parts`, counting those of the warehouses `stocks_from` admits.
    pub fn sum<'a>(
        parts: impl Iterator<Item = &'a StockPart>,
        stocks_from: impl Fn(&str) -> bool,
    ) -> ErpStock {
        parts.fold(ErpStock::default(), |mut sum, p| {
            if stocks_from(&p.warehouse) {
                sum.sellable += p.sellable;
                sum.own_reserved += p.own_reserved;
            }
            sum.own_reserved_anywhere += p.own_reserved;
            sum
        })
    }
}

/// The count to write and the bookkeeping to keep with it, from the ERP's
/// stock, the last write, what the shop shows now, and the time (Unix s).
pub fn decide(
    erp: ErpStock,
    safety_stock: i64,
    last: Option<&CountWritten>,
    shown: Option<i64>,
    now: i64,
) -> CountWritten {
    let (held, held_since) = match last {
        None => (0, now),
        Some(last) => {
            // Units the shop lost since our last confirmed write: its sales.
            let sold = match (last.confirmed, shown) {
                (true, Some(shown)) => (last.quantity - shown).max(0),
                _ => 0,
            };
            // This shop's orders the ERP reserved since: those sales arriving.
            let arrived = (erp.own_reserved_anywhere - last.own_reserved).max(0);
            let held = (last.held + sold - arrived).max(0);
            let since = if last.held == 0 || sold > 0 && held > last.held {
                now
            } else {
                last.held_since
            };
            if held > 0 && now - since > HOLD_LIMIT.as_secs() as i64 {
                (0, now)
            } else {
                (held, since)
            }
        }
    };
    CountWritten {
        quantity: (erp.sellable - erp.own_reserved - safety_stock - held).max(0),
        own_reserved: erp.own_reserved_anywhere,
        held,
        held_since,
        confirmed: false,
    }
}

impl<P> Applier for StockCountToShop<P>
where
    P: StockCountPlatform,
    SyncError: From<P::Error>,
{
    const ENTITY: &'static str = stock_to_shop::ENTITY;
    const TOPIC: &'static str = ERP_STOCK;
    type Event = StockLevel;

    fn decode(&self, v: &apache_avro::types::Value) -> Option<Decoded<StockLevel>> {
        stock_to_shop::decode(v, &self.shop)
    }

    async fn apply(&mut self, events: &[Pending<StockLevel>]) -> Result<Vec<Outcome>, SyncError> {
        let mut outcomes = vec![Outcome::NotApplicable; events.len()];
        // The latest of each (SKU, warehouse) in the batch, and the events of each SKU.
        let mut parts: BTreeMap<(&str, &str), StockPart> = BTreeMap::new();
        let mut by_sku: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, e) in events.iter().enumerate() {
            let level = &e.event;
            by_sku.entry(&level.sku).or_default().push(i);
            let part = StockPart {
                sku: level.sku.clone(),
                warehouse: level.warehouse.clone(),
                version: e.version.0,
                sellable: level.on_hand - level.reserved_elsewhere,
                own_reserved: level.reserved_own,
            };
            let slot = parts
                .entry((&level.sku, &level.warehouse))
                .or_insert(part.clone());
            if part.version >= slot.version {
                *slot = part;
            }
        }
        if by_sku.is_empty() {
            return Ok(outcomes);
        }
        let parts: Vec<StockPart> = parts.into_values().collect();
        self.state.store_parts(&self.shop, &parts).await?;
        let skus: Vec<String> = by_sku.keys().map(|s| (*s).to_owned()).collect();
        let stored = self.state.load_parts(&self.shop, &skus).await?;
        let warehouses = &self.warehouses;
        let stocks_from = |w: &str| warehouses.is_empty() || warehouses.iter().any(|s| s == w);
        let last = self.state.load_counts(&self.shop, &skus).await?;
        // Read right before writing: the window a sale can slip through.
        let sku_refs: Vec<&str> = skus.iter().map(String::as_str).collect();
        let shown = self.platform.counts(&sku_refs).await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);

        let mut writes: Vec<(String, CountWritten)> = Vec::new();
        let mut holding: Vec<(String, CountWritten)> = Vec::new();
        for sku in &skus {
            let indexes = &by_sku[sku.as_str()];
            let Some(count) = shown.get(sku) else {
                for &i in indexes {
                    outcomes[i] = Outcome::DeadLetter {
                        class: "unknown_sku",
                        reason: format!("shop `{}` has no product with SKU `{sku}`", self.shop),
                    };
                }
                continue;
            };
            let erp = ErpStock::sum(stored.iter().filter(|p| &p.sku == sku), stocks_from);
            let next = decide(erp, self.safety_stock, last.get(sku), *count, now);
            if *count == Some(next.quantity) {
                for &i in indexes {
                    outcomes[i] = Outcome::Observed("unchanged");
                }
                holding.push((
                    sku.clone(),
                    CountWritten {
                        confirmed: true,
                        ..next
                    },
                ));
            } else {
                for &i in indexes {
                    outcomes[i] = Outcome::Applied;
                }
                writes.push((sku.clone(), next));
            }
        }
        // Counts found in place (confirmed) and those about to be written
        // (intended), recorded in one statement.
        let recorded: Vec<(String, CountWritten)> =
            holding.into_iter().chain(writes.iter().cloned()).collect();
        self.state.record_counts(&self.shop, &recorded).await?;
        let counts: Vec<(String, i64)> = writes
            .iter()
            .map(|(sku, c)| (sku.clone(), c.quantity))
            .collect();
        let results = self.platform.set_counts(&counts).await?;
        let mut confirmed = Vec::new();
        for ((sku, quantity), result) in counts.into_iter().zip(results) {
            match result {
                Ok(()) => confirmed.push((sku, quantity)),
                Err(reason) => {
                    for &i in &by_sku[sku.as_str()] {
                        outcomes[i] = Outcome::DeadLetter {
                            class: "shop_rejected",
                            reason: format!("shop `{}`: {reason}", self.shop),
                        };
                    }
                }
            }
        }
        self.state.confirm_counts(&self.shop, &confirmed).await?;
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;

    fn written(quantity: i64, own_reserved: i64, held: i64) -> CountWritten {
        CountWritten {
            quantity,
            own_reserved,
            held,
            held_since: NOW - 10,
            confirmed: true,
        }
    }

    fn erp(sellable: i64, own_reserved: i64) -> ErpStock {
        ErpStock {
            sellable,
            own_reserved,
            own_reserved_anywhere: own_reserved,
        }
    }

    #[test]
    fn a_sale_the_erp_fills_from_another_warehouse_is_released() {
        // Held 2; the ERP reserves the order in a warehouse the shop is not
        // stocked from: the shop's warehouses still have every unit.
        let last = written(8, 0, 2);
        let other = ErpStock {
            own_reserved_anywhere: 2,
            ..erp(10, 0)
        };
        let next = decide(other, 0, Some(&last), Some(8), NOW);
        assert_eq!((next.quantity, next.held), (10, 0));
    }

    #[test]
    fn sums_count_the_shops_warehouses_and_reservations_anywhere() {
        let part = |warehouse: &str, sellable: i64, own_reserved: i64| StockPart {
            sku: "S".into(),
            warehouse: warehouse.into(),
            version: 1,
            sellable,
            own_reserved,
        };
        let parts = [part("WH1", 5, 1), part("WH2", 7, 0), part("WH3", 100, 2)];
        let sum = ErpStock::sum(parts.iter(), |w| w != "WH3");
        assert_eq!(
            sum,
            ErpStock {
                sellable: 12,
                own_reserved: 1,
                own_reserved_anywhere: 3
            }
        );
    }

    #[test]
    fn a_first_write_is_the_erps_number_less_safety_stock() {
        let next = decide(erp(10, 2), 1, None, Some(3), NOW);
        assert_eq!((next.quantity, next.held), (7, 0));
        assert_eq!(decide(erp(1, 0), 5, None, None, NOW).quantity, 0);
    }

    #[test]
    fn a_sale_the_erp_has_not_reserved_stays_off_sale() {
        // We wrote 10; the shop sold 2 (shows 8); an unrelated ERP event
        // (a receipt of 5) comes before the order reaches the ERP.
        let last = written(10, 0, 0);
        let next = decide(erp(15, 0), 0, Some(&last), Some(8), NOW);
        assert_eq!((next.quantity, next.held), (13, 2));
        // The order arrives: the ERP reserves 2 for this shop. Nothing moves,
        // and nothing is held any more.
        let next = decide(erp(15, 2), 0, Some(&next.confirmed()), Some(13), NOW);
        assert_eq!((next.quantity, next.held), (13, 0));
        // It ships: on hand and the reservation fall together.
        let next = decide(erp(13, 0), 0, Some(&next.confirmed()), Some(13), NOW);
        assert_eq!((next.quantity, next.held), (13, 0));
    }

    #[test]
    fn held_units_are_released_after_the_limit() {
        let mut last = written(8, 0, 2);
        last.held_since = NOW - HOLD_LIMIT.as_secs() as i64 - 1;
        let next = decide(erp(10, 0), 0, Some(&last), Some(8), NOW);
        assert_eq!((next.quantity, next.held), (10, 0));
    }

    #[test]
    fn an_unconfirmed_write_is_not_a_base_for_sales() {
        // The write of 10 may not have landed: the shop's 7 proves no sale.
        let last = CountWritten {
            confirmed: false,
            ..written(10, 0, 0)
        };
        let next = decide(erp(10, 0), 0, Some(&last), Some(7), NOW);
        assert_eq!((next.quantity, next.held), (10, 0));
    }

    #[test]
    fn a_count_raised_in_the_shop_is_set_back_to_the_erps() {
        let last = written(10, 0, 0);
        let next = decide(erp(10, 0), 0, Some(&last), Some(50), NOW);
        assert_eq!((next.quantity, next.held), (10, 0));
    }

    impl CountWritten {
        fn confirmed(self) -> CountWritten {
            CountWritten {
                confirmed: true,
                ..self
            }
        }
    }
}
