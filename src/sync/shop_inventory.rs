//! `shop.inventory.v1`: the shop's inventory level changes, ours included.
//!
//! The ERP is the master of stock, so nothing here is pushed anywhere. A level
//! equal to what the stock processor last wrote is our own write coming back
//! (an echo) and is dropped; any other level is a change made in the shop (a
//! sale committing stock, a manual edit) and is counted and logged, so an
//! operator can see the shop drifting from the ERP between ERP changes. Sales
//! reach the ERP as orders, not as inventory.

use tokio_util::sync::CancellationToken;

use super::Lane;
use super::apply_loop::{self, Applier, Decoded, Outcome, Pending, SyncError};
use super::state::StateDb;
use crate::config::{Config, ShopConfig};
use crate::shop::mapping::{SHOP_INVENTORY, ShopInventoryEvent};

pub struct ShopInventory {
    state: StateDb,
    channel: String,
}

/// Runs the shop inventory consumer until `shutdown`.
pub async fn run(
    config: &Config,
    shop: &ShopConfig,
    shutdown: CancellationToken,
) -> Result<(), SyncError> {
    let lane = Lane::for_shop(ShopInventory::ENTITY, ShopInventory::TOPIC, &shop.name);
    apply_loop::supervised(config, lane, shutdown, || async {
        let state = StateDb::connect(config).await?;
        Ok(ShopInventory {
            state,
            channel: shop.name.clone(),
        })
    })
    .await
}

impl Applier for ShopInventory {
    const ENTITY: &'static str = "shop_inventory";
    const TOPIC: &'static str = SHOP_INVENTORY;
    type Event = ShopInventoryEvent;

    fn decode(&self, v: &apache_avro::types::Value) -> Option<Decoded<ShopInventoryEvent>> {
        let e: ShopInventoryEvent = apache_avro::from_value(v).ok()?;
        Some(Decoded {
            key: e.key.clone(),
            version: (e.version, e.version_tiebreak.clone()),
            source_ts_micros: e.source_ts,
            event: e,
        })
    }

    async fn apply(
        &mut self,
        events: &[Pending<ShopInventoryEvent>],
    ) -> Result<Vec<Outcome>, SyncError> {
        let pairs: Vec<(String, String)> = events
            .iter()
            .map(|p| {
                (
                    p.event.inventory_item_id.clone(),
                    p.event.location_id.clone(),
                )
            })
            .collect();
        let written = self.state.load_levels(&self.channel, &pairs).await?;
        Ok(events
            .iter()
            .zip(&pairs)
            .map(|(p, pair)| {
                let e = &p.event;
                if e.channel != self.channel {
                    return Outcome::NotApplicable;
                }
                let ours = written.get(pair).map(|w| w.quantity);
                if e.available.is_some() && e.available == ours {
                    Outcome::Observed("echo")
                } else {
                    tracing::debug!(
                        item = %e.inventory_item_id,
                        location = %e.location_id,
                        shop = ?e.available,
                        last_written = ?ours,
                        "inventory changed in the shop"
                    );
                    Outcome::Observed("shop_change")
                }
            })
            .collect())
    }
}
