//! Processors: consume Kafka topics and apply them to the other side,
//! idempotently and version-guarded. `apply_loop` is the loop they share;
//! each entity implements its `Applier`.

pub mod apply_loop;
pub mod orders_to_erp;
pub mod partition_leases;
pub mod price_to_shop;
pub mod shop_catalog;
pub mod shop_inventory;
pub mod status_to_shop;
pub mod stock_to_shop;
pub mod version_store;
pub mod written_levels;

/// (entity, logical topic) of every processor: its consumer group (where its
/// offsets are committed) is `processors.group_id` + `.` + entity.
pub const CONSUMED: [(&str, &str); 5] = [
    ("stock", crate::bus::topics::ERP_STOCK),
    ("price", crate::bus::topics::ERP_PRICE),
    ("order_status", crate::bus::topics::ERP_ORDER_STATUS),
    ("order_in", crate::shop::mapping::SHOP_ORDERS),
    ("shop_inventory", crate::shop::mapping::SHOP_INVENTORY),
];

#[cfg(test)]
mod tests {
    use super::apply_loop::Applier;
    use super::*;

    #[test]
    fn consumed_lists_every_processor() {
        let appliers = [
            (
                stock_to_shop::StockToShop::ENTITY,
                stock_to_shop::StockToShop::TOPIC,
            ),
            (
                price_to_shop::PriceToShop::ENTITY,
                price_to_shop::PriceToShop::TOPIC,
            ),
            (
                status_to_shop::StatusToShop::ENTITY,
                status_to_shop::StatusToShop::TOPIC,
            ),
            (
                orders_to_erp::OrdersToErp::ENTITY,
                orders_to_erp::OrdersToErp::TOPIC,
            ),
            (
                shop_inventory::ShopInventory::ENTITY,
                shop_inventory::ShopInventory::TOPIC,
            ),
        ];
        assert_eq!(super::CONSUMED, appliers);
    }
}
