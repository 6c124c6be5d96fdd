//! Shopify: the Admin GraphQL client with its cost budget (`admin_api`), the
//! catalogue lookups (`catalog`: SKU → variant, product, inventory item;
//! location names → ids) and the platform traits of `shop::platform`
//! (`inventory`, `orders`, `prices`), and its orders for the order poll
//! (`order_poll`); bulk queries (`bulk`) and the whole catalogue read through
//! one (`export`), for reconciliation. Its webhooks are mapped in
//! `shop::mapping`.

pub mod admin_api;
pub mod bulk;
pub mod catalog;
pub mod export;
pub mod inventory;
pub mod order_poll;
pub mod orders;
pub mod prices;
