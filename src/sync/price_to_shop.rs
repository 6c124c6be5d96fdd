//! `erp.price.v1` → a shop's prices, on any platform (`shop::platform::PricePlatform`).
//!
//! Only the shop's own price list (`price_list`, in `currency`, from its
//! `[[shops]]` entry) is applied; other lists are not applicable to this shop.
//! The shop's current prices are read first and those it already shows are
//! left out (`unchanged`: a replay writes nothing). A SKU the shop lacks is a
//! dead letter naming the shop. A deleted price leaves the shop's price as it
//! is (a product always has one).
//!
//! The version of each price about to be written is recorded first (per
//! event key, under `<lane>#sent` in the version store), and an event older
//! than it is not written. A worker killed after its write went out but
//! before it stored its versions leaves its batch to be replayed, maybe
//! batched differently: without that record, an older price replayed alone
//! would be written over the newer one the shop already shows, until the
//! newer event came round again.

use tokio_util::sync::CancellationToken;

use super::Lane;
use super::apply_loop::{self, Applier, Decoded, Outcome, Pending, SyncError};
use super::shop_catalog::StoredCatalog;
use super::state::StateDb;
use crate::bus::avro::{field, field_i64, field_str};
use crate::bus::topics::ERP_PRICE;
use crate::config::{Config, Platform, ShopConfig};
use crate::shop::platform::{PricePlatform, PriceWrite};
use crate::shop::shopify::prices::ShopifyPrices;
use crate::shop::woocommerce::WooClient;

#[derive(Clone, Debug)]
pub struct Price {
    pub sku: String,
    pub price_list: String,
    pub currency: String,
    /// `None` when the ERP deleted the price.
    pub amount: Option<String>,
    pub compare_at: Option<String>,
}

pub struct PriceToShop<P> {
    platform: P,
    /// Flywheel's state database: the versions of the prices sent.
    state: StateDb,
    /// The version store's processor name for them.
    sent: String,
    shop: String,
    price_list: String,
    currency: String,
}

/// The entity and topic of every price processor, whatever the platform.
pub const ENTITY: &str = "price";

/// Runs the price processor of `shop` until `shutdown`.
pub async fn run(
    config: &Config,
    shop: &ShopConfig,
    shutdown: CancellationToken,
) -> Result<(), SyncError> {
    let lane = Lane::for_shop(ENTITY, ERP_PRICE, &shop.name);
    match shop.platform {
        Platform::Shopify => {
            apply_loop::supervised(config, lane, shutdown, || async {
                let catalog = StoredCatalog::for_shop(config, shop, ENTITY).await?;
                PriceToShop::new(config, shop, ShopifyPrices { catalog }).await
            })
            .await
        }
        Platform::Woocommerce => {
            apply_loop::supervised(config, lane, shutdown, || async {
                PriceToShop::new(config, shop, WooClient::for_shop(shop, ENTITY)?).await
            })
            .await
        }
    }
}

impl<P> PriceToShop<P> {
    /// The price processor of `shop`, writing through `platform`, with its
    /// own session on the state database.
    pub async fn new(config: &Config, shop: &ShopConfig, platform: P) -> Result<Self, SyncError> {
        Ok(PriceToShop {
            platform,
            state: StateDb::connect(config).await?,
            sent: format!(
                "{}#sent",
                Lane::for_shop(ENTITY, ERP_PRICE, &shop.name).name()
            ),
            shop: shop.name.clone(),
            price_list: shop.price_list.clone(),
            currency: shop.currency.clone(),
        })
    }
}

/// Decimal strings equal as amounts ("50" = "50.00"); both absent is equal.
pub fn same_amount(a: &Option<String>, b: &Option<String>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => match (a.parse::<f64>(), b.parse::<f64>()) {
            (Ok(x), Ok(y)) => (x - y).abs() < 0.000_5,
            _ => a == b,
        },
        _ => false,
    }
}

/// An `erp.price.v1` record; `None` for a record without the fields
/// (dead-lettered by the apply loop).
pub fn decode(v: &apache_avro::types::Value) -> Option<Decoded<Price>> {
    let deleted = matches!(
        field(v, "deleted"),
        Some(apache_avro::types::Value::Boolean(true))
    );
    Some(Decoded {
        key: field_str(v, "key")?.to_owned(),
        version: (field_i64(v, "version")?, String::new()),
        source_ts_micros: field_i64(v, "source_ts")?,
        event: Price {
            sku: field_str(v, "sku")?.to_owned(),
            price_list: field_str(v, "price_list")?.to_owned(),
            currency: field_str(v, "currency")?.to_owned(),
            amount: if deleted {
                None
            } else {
                field_str(v, "amount").map(str::to_owned)
            },
            compare_at: field_str(v, "compare_at").map(str::to_owned),
        },
    })
}

impl<P> Applier for PriceToShop<P>
where
    P: PricePlatform,
    SyncError: From<P::Error>,
{
    const ENTITY: &'static str = ENTITY;
    const TOPIC: &'static str = ERP_PRICE;
    type Event = Price;

    fn ready_in(&self) -> std::time::Duration {
        self.platform.ready_in()
    }

    fn batch_max(&self, configured: usize) -> usize {
        self.platform.batch_max(configured)
    }

    fn decode(&self, v: &apache_avro::types::Value) -> Option<Decoded<Price>> {
        decode(v)
    }

    async fn apply(&mut self, events: &[Pending<Price>]) -> Result<Vec<Outcome>, SyncError> {
        let mut outcomes: Vec<Outcome> = vec![Outcome::NotApplicable; events.len()];
        let ours: Vec<usize> = (0..events.len())
            .filter(|&i| {
                let e = &events[i].event;
                e.price_list == self.price_list && e.currency == self.currency && e.amount.is_some()
            })
            .collect();
        let keys: Vec<String> = ours.iter().map(|&i| events[i].key.clone()).collect();
        let sent = self.state.load_versions(&self.sent, &keys).await?;
        let ours: Vec<usize> = ours
            .into_iter()
            .filter(|&i| {
                let e = &events[i];
                let superseded = sent.get(&e.key).is_some_and(|v| *v > e.version);
                if superseded {
                    // A newer price of this key was sent (by a worker that
                    // died before storing it as applied): it follows in
                    // the replay, and this one must not undo it meanwhile.
                    outcomes[i] = Outcome::Observed("superseded");
                }
                !superseded
            })
            .collect();
        let skus: Vec<&str> = ours.iter().map(|&i| events[i].event.sku.as_str()).collect();
        let known = self.platform.known(&skus).await?;
        let present: Vec<&str> = skus
            .iter()
            .copied()
            .filter(|s| known.contains(*s))
            .collect();
        let current = self.platform.current(&present).await?;
        let mut writes: Vec<(usize, PriceWrite)> = Vec::new();
        for &i in &ours {
            let e = &events[i].event;
            if !known.contains(&e.sku) {
                outcomes[i] = Outcome::DeadLetter {
                    class: "unknown_sku",
                    reason: format!("shop `{}` has no product with SKU `{}`", self.shop, e.sku),
                };
                continue;
            }
            if let Some((price, compare_at)) = current.get(&e.sku)
                && same_amount(price, &e.amount)
                && same_amount(compare_at, &e.compare_at)
            {
                // Compare before write: the shop already shows it (e.g. after
                // a crash, or a shop seeded from the ERP). A write saved.
                outcomes[i] = Outcome::Observed("unchanged");
                continue;
            }
            let Some(amount) = e.amount.clone() else {
                continue;
            };
            writes.push((
                i,
                PriceWrite {
                    sku: e.sku.clone(),
                    amount,
                    compare_at: e.compare_at.clone(),
                },
            ));
        }
        let batch: Vec<PriceWrite> = writes.iter().map(|(_, w)| w.clone()).collect();
        let versions: Vec<(String, _)> = writes
            .iter()
            .map(|(i, _)| (events[*i].key.clone(), events[*i].version.clone()))
            .collect();
        self.state.store_versions(&self.sent, &versions).await?;
        let results = self.platform.set(&batch).await?;
        for ((i, _), result) in writes.into_iter().zip(results) {
            outcomes[i] = match result {
                Ok(()) => Outcome::Applied,
                Err(reason) => Outcome::DeadLetter {
                    class: "shop_rejected",
                    reason: format!("shop `{}`: {reason}", self.shop),
                },
            };
        }
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::same_amount;

    #[test]
    fn amounts_compare_as_decimals() {
        let s = |v: &str| Some(v.to_owned());
        assert!(same_amount(&s("50"), &s("50.00")));
        assert!(same_amount(&None, &None));
        assert!(!same_amount(&s("50.00"), &s("50.01")));
        assert!(!same_amount(&s("50.00"), &None));
    }
}
