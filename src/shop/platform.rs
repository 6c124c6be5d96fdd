//! What the processors need of a shop, whatever its platform: one trait per
//! capability, implemented once per platform (`shop::shopify`,
//! `shop::woocommerce`). What is not the platform's business is written once
//! in the processors (`sync::*`): which events concern the shop (its price
//! list, its channel), the version guard, compare-before-write, dead letters,
//! metrics.

use std::collections::{HashMap, HashSet};

/// One price to show for a SKU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriceWrite {
    pub sku: String,
    pub amount: String,
    /// The "was" price, shown struck through; `None` clears it.
    pub compare_at: Option<String>,
}

/// (price, compare-at price) as the shop shows them now.
pub type ShownPrice = (Option<String>, Option<String>);

/// The prices of a shop.
///
/// Contract:
/// - `known` and `current` read; they never write. A SKU the shop lacks is
///   absent from their answers (the processor dead-letters it, naming the
///   shop), never an error.
/// - `set` writes each price as given, absolutely (no increments): repeating a
///   write — after a crash, a replay, a retry — leaves the shop as one write
///   would. Writes of one call may land in any order; the processor never puts
///   two writes of one SKU in one call.
/// - `set` answers one entry per write, in order: `Ok` when the shop took it,
///   `Err(reason)` when the shop refused that write (its words, for the dead
///   letter). An `Err` of the whole call is the platform being unreachable,
///   throttled beyond patience or refusing the credentials: nothing is known to
///   be written, and the processor retries or stops as the error says.
pub trait PricePlatform: PriceReader {
    /// As `StockLevelPlatform::ready_in`.
    fn ready_in(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// Most prices worth gathering into one `set` (`configured`: the
    /// processors' `batch_max`); more where a large `set` becomes one bulk
    /// operation.
    fn batch_max(&self, configured: usize) -> usize {
        configured
    }

    /// Writes `prices`; one outcome per write, in order.
    fn set(
        &mut self,
        prices: &[PriceWrite],
    ) -> impl Future<Output = Result<Vec<Result<(), String>>, Self::Error>> + Send;
}

/// The reading half of [`PricePlatform`] (its contract for `known` and
/// `current`): what reconciliation needs, and all a read-only view of a shop
/// (a bulk export) offers.
pub trait PriceReader: Send {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Which of `skus` the shop has (looked up, cached, refreshed on a miss).
    fn known(
        &mut self,
        skus: &[&str],
    ) -> impl Future<Output = Result<HashSet<String>, Self::Error>> + Send;

    /// What the shop shows now for `skus` (read, not cached: a merchant may
    /// have edited prices).
    fn current(
        &mut self,
        skus: &[&str],
    ) -> impl Future<Output = Result<HashMap<String, ShownPrice>, Self::Error>> + Send;
}

/// Where an order stands in the shop, as far as the ERP's status goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderState {
    Open,
    Fulfilled,
    Cancelled,
}

/// The orders of a shop, as the order status processor moves them.
///
/// Contract:
/// - `state` reads; `None` is an order the shop does not have.
/// - `fulfil` and `cancel` are called only for an order `state` found open,
///   but a crash can come between a write and its record, so either may run
///   again for an order it already moved, or half moved: it must not show the
///   customer anything twice (a platform without idempotency keys reads
///   before it writes).
/// - Their inner `Err(reason)` is the shop refusing this order's change (its
///   words, for the dead letter); the outer error is the platform unreachable,
///   throttled beyond patience or refusing the credentials.
pub trait OrderStatusPlatform: Send {
    type Error: std::error::Error + Send + Sync + 'static;

    fn state(
        &mut self,
        order_id: &str,
    ) -> impl Future<Output = Result<Option<OrderState>, Self::Error>> + Send;

    /// Marks the order shipped, telling the customer the carrier and tracking.
    fn fulfil(
        &mut self,
        order_id: &str,
        carrier: Option<&str>,
        tracking: Option<&str>,
    ) -> impl Future<Output = Result<Result<(), String>, Self::Error>> + Send;

    fn cancel(
        &mut self,
        order_id: &str,
    ) -> impl Future<Output = Result<Result<(), String>, Self::Error>> + Send;

    /// What fulfilling the order takes (or took) off the shop's stock levels,
    /// where the processors write those levels (`StockLevelPlatform`): the
    /// stock processor's last write may already count the shipment, which the
    /// order status processor then repairs. Read before `fulfil` (a platform
    /// may forget where an open order ships from once it is fulfilled). Empty
    /// where a fulfilment moves no stock the processors write (WooCommerce
    /// counts a sale off at once).
    fn shipped_from(
        &mut self,
        order_id: &str,
    ) -> impl Future<Output = Result<Vec<Shipped>, Self::Error>> + Send;
}

/// Units of a SKU a fulfilment takes off the shop's stock at a location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shipped {
    pub sku: String,
    pub location: String,
    pub units: i64,
}

/// The stock of a shop that keeps one count per SKU, which the shop itself
/// lowers the moment it sells (WooCommerce's `stock_quantity`), across all
/// the warehouses it is stocked from.
///
/// Contract:
/// - `counts` reads, never writes: SKU → the count the shop shows now
///   (`None`: the shop does not track that SKU's stock). A SKU the shop lacks
///   is absent (the processor dead-letters it, naming the shop).
/// - `set_counts` writes each count absolutely and turns stock tracking on:
///   repeating a write leaves the shop as one write would. One call never
///   holds two writes of one SKU. A platform without compare-and-set cannot
///   stop a sale landing between the processor's read and its write from
///   being overwritten: the processor reads right before it writes, and the
///   ERP's reservation of that order corrects the count on its next event.
/// - `set_counts` answers one entry per write, in order, as
///   `PricePlatform::set` does.
pub trait StockCountPlatform: Send {
    type Error: std::error::Error + Send + Sync + 'static;

    fn counts(
        &mut self,
        skus: &[&str],
    ) -> impl Future<Output = Result<HashMap<String, Option<i64>>, Self::Error>> + Send;

    /// Writes `counts` (SKU, count); one outcome per write, in order.
    fn set_counts(
        &mut self,
        counts: &[(String, i64)],
    ) -> impl Future<Output = Result<Vec<Result<(), String>>, Self::Error>> + Send;
}

/// One level to set: an inventory item at a location, the `on_hand` wanted,
/// and the `on_hand` the processor believes the shop has now (`None`: nothing
/// is known, set without a compare).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnHandWrite {
    pub item: String,
    pub location: String,
    pub on_hand: i64,
    pub compare: Option<i64>,
}

/// What became of one `StockLevelPlatform::set_on_hand` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetOnHand {
    /// Every level was set.
    Done,
    /// Nothing was set: some level was not at its `compare` (a sale, a
    /// fulfilment, a person moved it). Normal concurrency: read and retry.
    Stale,
    /// Nothing was set by this call: a request with the same key is still
    /// being processed by the shop (typically one sent by a worker that died
    /// before its answer came). It may yet land: read and retry, as for
    /// `Stale`; never a reason to give up on the level.
    InProgress,
    /// Nothing was set: an inventory item is not in the shop (any more).
    /// The SKU → item mapping it came from is stale: `forget` those SKUs and
    /// try again, which looks them up anew.
    UnknownItem,
    /// Nothing was set: the shop refused the input (its words).
    Refused(String),
}

/// The stock of a shop that keeps levels per (inventory item, location) and
/// separates `on_hand` from what its own sales commit (Shopify), so setting
/// `on_hand` never puts a sold unit back on sale.
///
/// Contract:
/// - `items` and `location` look up (cached, looked up again on a miss) and
///   never write; a SKU or location the shop lacks is absent / `None`.
/// - `on_hand` reads, not cached; a level the shop does not report is absent.
/// - `set_on_hand` is all or nothing, and compare-and-set: each level is set
///   only if it still holds its `compare`. `key` identifies the whole input:
///   the shop answers a repeat of the same key and input from its record
///   without applying it twice, so a retry after a lost answer is safe; the
///   processor makes a new key whenever the input changes. A repeat that
///   arrives while the first is still processed is `InProgress`.
pub trait StockLevelPlatform: StockLevelReader {
    /// How long until a write could go out without waiting for the shop's
    /// rate budget; the processor gathers more events meanwhile, so batches
    /// grow when the budget is short and not otherwise.
    fn ready_in(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    fn set_on_hand(
        &mut self,
        writes: &[OnHandWrite],
        key: &str,
    ) -> impl Future<Output = Result<SetOnHand, Self::Error>> + Send;

    /// The items `items` gave for these SKUs are gone from the shop (the
    /// products were replaced): reads these SKUs' items from the shop itself,
    /// never from a mapping that may still hold the gone ones, and keeps them
    /// for later `items` (unless the mapping holds something that may be
    /// newer, which then costs the next write the same lookup). SKU → item,
    /// of those the shop has now.
    fn look_up_again(
        &mut self,
        skus: &[&str],
    ) -> impl Future<Output = Result<HashMap<String, String>, Self::Error>> + Send;
}

/// The reading half of [`StockLevelPlatform`] (its contract for `items`,
/// `location` and `on_hand`): what reconciliation needs, and all a read-only
/// view of a shop (a bulk export) offers.
pub trait StockLevelReader: Send {
    type Error: std::error::Error + Send + Sync + 'static;

    /// SKU → inventory item, of those the shop has.
    fn items(
        &mut self,
        skus: &[&str],
    ) -> impl Future<Output = Result<HashMap<String, String>, Self::Error>> + Send;

    /// The location of that name.
    fn location(
        &mut self,
        name: &str,
    ) -> impl Future<Output = Result<Option<String>, Self::Error>> + Send;

    /// The `on_hand` of (item, location) pairs the shop reports.
    fn on_hand(
        &mut self,
        pairs: &[(String, String)],
    ) -> impl Future<Output = Result<HashMap<(String, String), i64>, Self::Error>> + Send;
}
