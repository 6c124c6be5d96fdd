//! WooCommerce (REST API v3): the client with its rate limit and retry policy
//! (`client`), products by SKU and the batch endpoints (`products`), the
//! platform traits of `shop::platform` (`stock`, `prices`, `orders`), and the
//! order poll under its webhooks (`order_poll`). Its webhooks are mapped in
//! `shop::mapping`.

pub mod client;
pub mod order_poll;
pub mod orders;
pub mod prices;
pub mod products;
pub mod stock;

pub use client::{WooClient, WooError};
