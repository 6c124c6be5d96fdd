//! `erp.order_status.v1` → a shop's orders, on any platform
//! (`shop::platform::OrderStatusPlatform`).
//!
//! Only the orders of the shop's own channel. A shipped ERP order is fulfilled
//! with its carrier and tracking number; a cancelled one is cancelled. Draft
//! and confirmed need nothing in the shop (the order came from there). Each
//! write first reads the order, so it is idempotent against the shop's own
//! state: an order already fulfilled or cancelled counts as applied, and a
//! replay or duplicate changes nothing. A status the shop cannot take
//! (shipping an order the shop cancelled) is a conflict for a person: it goes
//! to the dead-letter topic with the reason.
//!
//! On a platform whose fulfilment lowers the `on_hand` the stock processor
//! writes (Shopify), a fulfilment can count a shipment twice with the stock
//! processor's last write: `DoubleCountRepair` puts it back (see there).

use std::collections::BTreeSet;

use tokio_util::sync::CancellationToken;

use super::Lane;
use super::apply_loop::{self, Applier, Decoded, Outcome, Pending, SyncError};
use super::shop_catalog::StoredCatalog;
use super::state::StateDb;
use crate::bus::avro::{field, field_i64, field_str};
use crate::bus::topics::ERP_ORDER_STATUS;
use crate::config::{Config, Platform, ShopConfig};
use crate::shop::admin_api::AdminApi;
use crate::shop::platform::{
    OnHandWrite, OrderState, OrderStatusPlatform, SetOnHand, Shipped, StockLevelPlatform,
};
use crate::shop::shopify::catalog::ShopCatalog;
use crate::shop::shopify::inventory::ShopifyInventory;
use crate::shop::shopify::orders::ShopifyOrders;
use crate::shop::woocommerce::WooClient;

#[derive(Clone, Debug)]
pub struct OrderStatus {
    pub channel: String,
    pub shop_order_id: String,
    /// `draft`, `confirmed`, `shipped` or `cancelled`; `None` when deleted.
    pub status: Option<String>,
    pub carrier: Option<String>,
    pub tracking_ref: Option<String>,
}

/// The entity of every order status processor, whatever the platform.
pub const ENTITY: &str = "order_status";

/// Runs `shop`'s order status processor until `shutdown`.
pub async fn run(
    config: &Config,
    shop: &ShopConfig,
    shutdown: CancellationToken,
) -> Result<(), SyncError> {
    let lane = Lane::for_shop(ENTITY, ERP_ORDER_STATUS, &shop.name);
    match shop.platform {
        Platform::Shopify => {
            apply_loop::supervised(config, lane, shutdown, || async {
                Ok(StatusToShop {
                    platform: ShopifyOrders::new(ShopCatalog::in_memory(AdminApi::for_shop(
                        shop, ENTITY,
                    )?)),
                    channel: shop.name.clone(),
                    repair: DoubleCountRepair::new(
                        ShopifyInventory {
                            catalog: StoredCatalog::for_shop(config, shop, ENTITY).await?,
                        },
                        StateDb::connect(config).await?,
                    ),
                })
            })
            .await
        }
        Platform::Woocommerce => {
            apply_loop::supervised(config, lane, shutdown, || async {
                Ok(StatusToShop {
                    platform: WooClient::for_shop(shop, ENTITY)?,
                    channel: shop.name.clone(),
                    repair: (),
                })
            })
            .await
        }
    }
}

fn decode(v: &apache_avro::types::Value) -> Option<Decoded<OrderStatus>> {
    let deleted = matches!(
        field(v, "deleted"),
        Some(apache_avro::types::Value::Boolean(true))
    );
    let opt = |name| field_str(v, name).map(str::to_owned);
    Some(Decoded {
        key: field_str(v, "key")?.to_owned(),
        version: (field_i64(v, "version")?, String::new()),
        source_ts_micros: field_i64(v, "source_ts")?,
        event: OrderStatus {
            channel: field_str(v, "channel")?.to_owned(),
            shop_order_id: field_str(v, "shop_order_id")?.to_owned(),
            status: if deleted { None } else { opt("status") },
            carrier: opt("carrier"),
            tracking_ref: opt("tracking_ref"),
        },
    })
}

/// What follows a fulfilment the shop took (or had taken already).
pub trait AfterFulfil: Send {
    /// `shipped`: what the fulfilment took off the shop's levels;
    /// `shipped_at_version`: the ERP version of the shipment.
    fn after_fulfil(
        &mut self,
        channel: &str,
        shipped: &[Shipped],
        shipped_at_version: i64,
    ) -> impl Future<Output = Result<(), SyncError>> + Send;
}

/// Nothing follows (a platform whose fulfilment moves no stock we write).
impl AfterFulfil for () {
    async fn after_fulfil(&mut self, _: &str, _: &[Shipped], _: i64) -> Result<(), SyncError> {
        Ok(())
    }
}

/// A fulfilment takes the shipped units off the shop's `on_hand`. The ERP
/// took them off its own stock in the same transaction that shipped the order
/// (version `shipped_at_version`), and if the stock processor wrote that
/// already (its last write to the level carries a version at least this one,
/// `sync::state`), the shop now counts the shipment twice. Then a level the
/// shop shows below the written value is put back to it, compare-and-set on
/// what was just read. Not "written minus this shipment": when a crash leaves
/// two fulfilments of one level done before either repair, the level is
/// written minus both, and each repair's compare would miss. Below the written
/// value, after it, only fulfilments can take a level (shop sales commit
/// units, they do not lower `on_hand`) or a hand in the shop admin, which the
/// stock processor overrides with the ERP's value anyway. In the other order —
/// fulfilment first — the stock processor's own compare fails, it re-reads and
/// writes the right number, and nothing is done here.
pub struct DoubleCountRepair<S> {
    levels: S,
    state: StateDb,
}

impl<S> DoubleCountRepair<S> {
    /// Repairs on `levels`, knowing the stock processor's writes from `state`.
    pub fn new(levels: S, state: StateDb) -> Self {
        DoubleCountRepair { levels, state }
    }
}

impl<S> AfterFulfil for DoubleCountRepair<S>
where
    S: StockLevelPlatform,
    SyncError: From<S::Error>,
{
    async fn after_fulfil(
        &mut self,
        channel: &str,
        shipped: &[Shipped],
        shipped_at_version: i64,
    ) -> Result<(), SyncError> {
        if shipped.is_empty() {
            return Ok(());
        }
        let skus: Vec<&str> = shipped.iter().map(|s| s.sku.as_str()).collect();
        let items = self.levels.items(&skus).await?;
        // The levels the fulfilment took units from.
        let pairs: Vec<(String, String)> = shipped
            .iter()
            .filter_map(|s| Some((items.get(&s.sku)?.clone(), s.location.clone())))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        // The shop first, then our record: a write recorded after the read
        // only makes the compare below miss, never restore an older value.
        let shown = self.levels.on_hand(&pairs).await?;
        let written = self.state.load_levels(channel, &pairs).await?;
        // One level per call: each compare stands alone.
        for pair in pairs {
            let (Some(w), Some(&now)) = (written.get(&pair), shown.get(&pair)) else {
                continue;
            };
            if w.version < shipped_at_version || now >= w.quantity {
                continue;
            }
            let write = OnHandWrite {
                item: pair.0.clone(),
                location: pair.1.clone(),
                on_hand: w.quantity,
                compare: Some(now),
            };
            let key = {
                use std::hash::{DefaultHasher, Hash, Hasher};
                let mut h = DefaultHasher::new();
                (channel, &pair, shipped_at_version, w.quantity, now).hash(&mut h);
                format!("flywheel-shipment-{:016x}", h.finish())
            };
            match self.levels.set_on_hand(&[write], &key).await? {
                SetOnHand::Done => {
                    tracing::debug!(item = %pair.0, location = %pair.1, "shipment was counted twice in the shop; on_hand restored");
                }
                // The level is not the double-counted one: nothing to undo.
                // Or this very repair, sent before a crash, is still being
                // processed: it lands without us.
                // Or the item is gone: nothing left to put back.
                SetOnHand::Stale | SetOnHand::InProgress | SetOnHand::UnknownItem => {}
                SetOnHand::Refused(reason) => {
                    tracing::warn!(item = %pair.0, location = %pair.1, %reason, "the shop refused to put back a double-counted shipment");
                }
            }
        }
        Ok(())
    }
}

/// The order status processor of a shop on platform `P`, with `R` after a
/// fulfilment (`()` or `DoubleCountRepair`).
pub struct StatusToShop<P, R> {
    platform: P,
    channel: String,
    repair: R,
}

impl<P, R> StatusToShop<P, R>
where
    P: OrderStatusPlatform,
    SyncError: From<P::Error>,
    R: AfterFulfil,
{
    async fn repair(
        &mut self,
        order_id: &str,
        version: i64,
        shipped: Option<Vec<Shipped>>,
    ) -> Result<(), SyncError> {
        let shipped = match shipped {
            Some(s) => s,
            None => self.platform.shipped_from(order_id).await?,
        };
        self.repair
            .after_fulfil(&self.channel, &shipped, version)
            .await
    }
}

impl<P, R> Applier for StatusToShop<P, R>
where
    P: OrderStatusPlatform,
    SyncError: From<P::Error>,
    R: AfterFulfil,
{
    const ENTITY: &'static str = ENTITY;
    const TOPIC: &'static str = ERP_ORDER_STATUS;
    type Event = OrderStatus;

    fn decode(&self, v: &apache_avro::types::Value) -> Option<Decoded<OrderStatus>> {
        decode(v)
    }

    async fn apply(&mut self, events: &[Pending<OrderStatus>]) -> Result<Vec<Outcome>, SyncError> {
        let mut outcomes = Vec::with_capacity(events.len());
        for p in events {
            let e = &p.event;
            let wanted = match e.status.as_deref() {
                _ if e.channel != self.channel => None,
                Some("shipped") => Some(OrderState::Fulfilled),
                Some("cancelled") => Some(OrderState::Cancelled),
                _ => None,
            };
            let Some(wanted) = wanted else {
                outcomes.push(Outcome::NotApplicable);
                continue;
            };
            let id = e.shop_order_id.as_str();
            let status = e.status.as_deref().unwrap_or("deleted");
            let outcome = match self.platform.state(id).await? {
                None => Outcome::DeadLetter {
                    class: "unknown_order",
                    reason: format!("shop `{}` has no order {id}", self.channel),
                },
                Some(now) if now == wanted => {
                    if wanted == OrderState::Fulfilled {
                        // Fulfilled, but this shipment not recorded as applied:
                        // a crash came between the fulfilment and the repair
                        // (or the merchant fulfilled it by hand). The repair
                        // is a compare-and-set: again, it changes nothing.
                        self.repair(id, p.version.0, None).await?;
                    }
                    Outcome::Applied
                }
                Some(OrderState::Open) => {
                    let done = match wanted {
                        OrderState::Fulfilled => {
                            let shipped = self.platform.shipped_from(id).await?;
                            let done = self
                                .platform
                                .fulfil(id, e.carrier.as_deref(), e.tracking_ref.as_deref())
                                .await?;
                            if done.is_ok() {
                                self.repair(id, p.version.0, Some(shipped)).await?;
                            }
                            done
                        }
                        _ => self.platform.cancel(id).await?,
                    };
                    match done {
                        Ok(()) => Outcome::Applied,
                        Err(reason) => Outcome::DeadLetter {
                            class: "shop_rejected",
                            reason: format!(
                                "shop `{}` refused order {id}'s status `{status}`: {reason}",
                                self.channel
                            ),
                        },
                    }
                }
                Some(now) => Outcome::DeadLetter {
                    class: "conflict",
                    reason: format!(
                        "the ERP says order {id} is {status} but shop `{}` has it {now:?}; settle it by hand",
                        self.channel
                    ),
                },
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }
}
