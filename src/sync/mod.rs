//! Processors: consume Kafka topics and apply them to the other side,
//! idempotently and version-guarded. `apply_loop` is the loop they share;
//! each entity implements its `Applier`.

pub mod apply_loop;
pub mod orders_to_erp;
pub mod partition_leases;
pub mod price_to_shop;
pub mod shop_catalog;
pub mod shop_inventory;
pub mod state;
pub mod status_to_shop;
pub mod stock_count_to_shop;
pub mod stock_to_shop;

/// One processor's stream of work: an entity for one shop, or for the ERP as
/// a whole (orders in). Its consumer group (where its offsets are committed)
/// is `processors.group_id` + `.` + entity (+ `.` + shop), so a throttled or
/// failing shop never holds another back.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Lane {
    pub entity: &'static str,
    /// The logical topic consumed.
    pub topic: &'static str,
    pub shop: Option<String>,
}

/// (entity, logical topic) of the processors every Shopify shop gets.
pub const PER_SHOP: [(&str, &str); 5] = [
    ("stock", crate::bus::topics::ERP_STOCK),
    ("price", crate::bus::topics::ERP_PRICE),
    ("order_status", crate::bus::topics::ERP_ORDER_STATUS),
    ("shop_inventory", crate::shop::mapping::SHOP_INVENTORY),
    ("catalog", crate::shop::mapping::SHOP_CATALOG),
];

/// The processor writing every shop's orders into the ERP.
pub const ORDERS_IN: (&str, &str) = ("order_in", crate::shop::mapping::SHOP_ORDERS);

/// Every logical topic a processor consumes.
pub fn consumed_topics() -> impl Iterator<Item = &'static str> {
    PER_SHOP.iter().chain([&ORDERS_IN]).map(|(_, topic)| *topic)
}

impl Lane {
    pub fn for_shop(entity: &'static str, topic: &'static str, shop: &str) -> Lane {
        Lane {
            entity,
            topic,
            shop: Some(shop.to_owned()),
        }
    }

    pub fn orders_in() -> Lane {
        Lane {
            entity: ORDERS_IN.0,
            topic: ORDERS_IN.1,
            shop: None,
        }
    }

    /// `stock.main-shop`, or `order_in`: the version store's processor name
    /// and the consumer group's suffix.
    pub fn name(&self) -> String {
        match &self.shop {
            Some(shop) => format!("{}.{shop}", self.entity),
            None => self.entity.to_owned(),
        }
    }

    /// The `shop` label of its metrics (empty for orders in).
    pub fn shop_label(&self) -> &str {
        self.shop.as_deref().unwrap_or("")
    }
}

/// The processors a shop gets: all of `PER_SHOP` on Shopify; on WooCommerce
/// (with an `admin_url`) stock, prices and order status (its stock changes
/// reach Flywheel as orders, not inventory webhooks, and its products are
/// looked up by SKU, not mapped to variants); none for a shop whose
/// webhooks are all Flywheel takes.
pub fn shop_processors(
    shop: &crate::config::ShopConfig,
) -> &'static [(&'static str, &'static str)] {
    use crate::config::Platform;
    match shop.platform {
        Platform::Shopify => &PER_SHOP,
        Platform::Woocommerce if !shop.admin_url.is_empty() => &PER_SHOP[..3],
        Platform::Woocommerce => &[],
    }
}

/// Every lane the configured processors run: each shop's processors, and
/// orders in.
pub fn lanes(config: &crate::config::Config) -> Vec<Lane> {
    let mut lanes: Vec<Lane> = config
        .shops
        .iter()
        .flat_map(|s| {
            shop_processors(s)
                .iter()
                .map(|(entity, topic)| Lane::for_shop(entity, topic, &s.name))
        })
        .collect();
    lanes.push(Lane::orders_in());
    lanes
}

#[cfg(test)]
mod tests {
    use super::apply_loop::Applier;
    use super::*;

    #[test]
    fn the_lanes_name_every_processor() {
        let per_shop = [
            (
                stock_to_shop::StockToShop::<crate::shop::shopify::inventory::ShopifyInventory>::ENTITY,
                stock_to_shop::StockToShop::<crate::shop::shopify::inventory::ShopifyInventory>::TOPIC,
            ),
            (
                price_to_shop::PriceToShop::<crate::shop::shopify::prices::ShopifyPrices>::ENTITY,
                price_to_shop::PriceToShop::<crate::shop::shopify::prices::ShopifyPrices>::TOPIC,
            ),
            (
                status_to_shop::StatusToShop::<crate::shop::woocommerce::WooClient, ()>::ENTITY,
                status_to_shop::StatusToShop::<crate::shop::woocommerce::WooClient, ()>::TOPIC,
            ),
            (
                shop_inventory::ShopInventory::ENTITY,
                shop_inventory::ShopInventory::TOPIC,
            ),
            (
                shop_catalog::CatalogFromShop::ENTITY,
                shop_catalog::CatalogFromShop::TOPIC,
            ),
        ];
        assert_eq!(PER_SHOP, per_shop);
        assert_eq!(
            ORDERS_IN,
            (
                orders_to_erp::OrdersToErp::ENTITY,
                orders_to_erp::OrdersToErp::TOPIC
            )
        );
    }

    #[test]
    fn each_shop_has_lanes_of_its_own() {
        let mut config = crate::config::Config::default();
        let mut second = config.shops[0].clone();
        second.name = "eu".into();
        config.shops.push(second);
        config.shops.push(crate::config::ShopConfig {
            name: "woo".into(),
            platform: crate::config::Platform::Woocommerce,
            ..config.shops[0].clone()
        });
        let names: Vec<String> = lanes(&config).iter().map(Lane::name).collect();
        assert_eq!(
            names,
            [
                "stock.demo",
                "price.demo",
                "order_status.demo",
                "shop_inventory.demo",
                "catalog.demo",
                "stock.eu",
                "price.eu",
                "order_status.eu",
                "shop_inventory.eu",
                "catalog.eu",
                "stock.woo",
                "price.woo",
                "order_status.woo",
                "order_in"
            ]
        );
    }
}
