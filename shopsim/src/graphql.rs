//! The Admin GraphQL API (a subset of 2026-04), served by async-graphql.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::connection::{Connection, Edge, query};
use async_graphql::{
    Context, CustomDirective, Directive, EmptySubscription, Enum, Error, ErrorExtensions, ID,
    InputObject, MaybeUndefined, Object, Result, Schema, SimpleObject,
};
use parking_lot::Mutex;

use crate::state::{
    Level, Location, Order, ShopState, Variant, format_cents, gid, now_rfc3339, parse_cents,
    parse_gid,
};
use crate::webhooks::{Topic, WebhookSender};

/// Most items per page and quantities per inventory mutation, as Shopify allows.
pub const MAX_PAGE: usize = 250;

pub type ShopSchema = Schema<QueryRoot, MutationRoot, EmptySubscription>;

/// Everything the resolvers share.
pub struct Shop {
    pub state: Mutex<ShopState>,
    pub webhooks: WebhookSender,
    pub idempotency: Mutex<HashMap<String, Idempotent>>,
    pub shop_domain: String,
    /// Added processing time of inventory and price mutations (fault
    /// injection), so that concurrent requests with one idempotency key can
    /// overlap, and a worker can be killed while its write is carried out.
    pub mutation_latency: Mutex<Duration>,
    /// Answer as API versions before 2026-01 (fault injection).
    pub no_bulk_operation_by_id: std::sync::atomic::AtomicBool,
    pub bulk: Arc<crate::bulk::BulkOps>,
}

/// A remembered `@idempotent` request.
pub enum Idempotent {
    InProgress {
        fingerprint: String,
    },
    Done {
        fingerprint: String,
        payload: InventorySetQuantitiesPayload,
    },
}

impl Shop {
    fn emit_all(&self, emitted: Vec<crate::state::Emitted>) {
        for e in emitted {
            self.webhooks.emit(e.topic, &e.payload);
        }
    }

    /// Carries out an accepted mutation after `mutation_latency`. Like
    /// Shopify, a request once accepted is carried out even if its client
    /// goes away (a worker killed mid-request): the work runs in its own task,
    /// so a dropped connection cannot leave it half done.
    async fn carry_out<T: Send + 'static>(
        self: &Arc<Shop>,
        what: &str,
        work: impl FnOnce(&Shop) -> T + Send + 'static,
    ) -> Result<T> {
        let s = Arc::clone(self);
        let task = tokio::spawn(async move {
            let latency = *s.mutation_latency.lock();
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            work(&s)
        });
        task.await
            .map_err(|e| Error::new(format!("{what} failed: {e}")))
    }
}

pub fn build_schema(shop: Arc<Shop>) -> ShopSchema {
    Schema::build(QueryRoot, MutationRoot, EmptySubscription)
        .data(shop)
        .directive(idempotent)
        .finish()
}

struct Passthrough;

impl CustomDirective for Passthrough {}

/// `@idempotent(key:)`: the resolver reads the key from the field's directives.
#[Directive(location = "Field")]
fn idempotent(key: String) -> impl CustomDirective {
    let _ = key;
    Passthrough
}

fn shop<'a>(ctx: &Context<'a>) -> &'a Arc<Shop> {
    ctx.data_unchecked::<Arc<Shop>>()
}

/// Reads from the shop's state under its lock.
fn read<T>(ctx: &Context<'_>, f: impl FnOnce(&ShopState) -> T) -> T {
    f(&shop(ctx).state.lock())
}

fn bad_id(kind: &str, id: &ID) -> Error {
    Error::new(format!("Invalid global id '{}' for {kind}", id.as_str()))
        .extend_with(|_, e| e.set("code", "BAD_REQUEST"))
}

/// Cursor pagination over `items` (cursor = index), at most 250 per page.
async fn paginate<T: async_graphql::OutputType>(
    items: Vec<T>,
    after: Option<String>,
    first: Option<i32>,
    last: Option<i32>,
) -> Result<Connection<usize, T>> {
    // A bulk query's connections take no page arguments: every node.
    let bulk = crate::bulk::in_bulk();
    let first = match (first, last) {
        (None, None) if bulk => Some(i32::try_from(items.len()).unwrap_or(i32::MAX)),
        _ => first,
    };
    if first.is_none() && last.is_none() {
        return Err(Error::new("you must provide one of first or last")
            .extend_with(|_, e| e.set("code", "BAD_REQUEST")));
    }
    if !bulk && (first.unwrap_or(0) as usize > MAX_PAGE || last.unwrap_or(0) as usize > MAX_PAGE) {
        return Err(Error::new(format!("first/last may not exceed {MAX_PAGE}"))
            .extend_with(|_, e| e.set("code", "MAX_INPUT_SIZE_EXCEEDED")));
    }
    query(
        after,
        None,
        first,
        last,
        |after: Option<usize>,
         _before: Option<usize>,
         first: Option<usize>,
         last: Option<usize>| async move {
            let start = after.map_or(0, |a| a + 1);
            let mut end = items.len();
            let mut start = start.min(end);
            if let Some(f) = first {
                end = (start + f).min(end);
            }
            if let Some(l) = last {
                start = start.max(end.saturating_sub(l));
            }
            let mut conn = Connection::new(start > 0, end < items.len());
            conn.edges.extend(
                items
                    .into_iter()
                    .enumerate()
                    .skip(start)
                    .take(end - start)
                    .map(|(i, item)| Edge::new(i, item)),
            );
            Ok::<_, Error>(conn)
        },
    )
    .await
}

/// `sku:A OR sku:B` (also `sku:'A'`) → the SKUs; `None` when no sku filter.
fn skus_in_query(q: &Option<String>) -> Option<Vec<String>> {
    let q = q.as_deref()?;
    let skus: Vec<String> = q
        .split(" OR ")
        .filter_map(|part| part.trim().strip_prefix("sku:"))
        .map(|s| s.trim_matches(|c| c == '\'' || c == '"').to_owned())
        .collect();
    (!skus.is_empty()).then_some(skus)
}

// ---------------------------------------------------------------- objects

#[derive(SimpleObject, Clone)]
pub struct MoneyV2 {
    amount: String,
    currency_code: String,
}

#[derive(SimpleObject, Clone)]
pub struct MoneyBag {
    shop_money: MoneyV2,
}

#[derive(SimpleObject, Clone)]
#[graphql(name = "Shop")]
pub struct ShopInfo {
    name: String,
    myshopify_domain: String,
    currency_code: String,
}

#[derive(Clone)]
pub struct ProductVariantGql(Variant);

#[Object(name = "ProductVariant")]
impl ProductVariantGql {
    async fn id(&self) -> ID {
        gid("ProductVariant", self.0.id).into()
    }
    async fn sku(&self) -> &str {
        &self.0.sku
    }
    async fn price(&self) -> &str {
        &self.0.price
    }
    async fn compare_at_price(&self) -> Option<&str> {
        self.0.compare_at_price.as_deref()
    }
    async fn updated_at(&self) -> &str {
        &self.0.updated_at
    }
    async fn product(&self) -> ProductRef {
        ProductRef {
            id: gid("Product", self.0.product_id).into(),
        }
    }
    async fn inventory_item(&self) -> InventoryItemGql {
        InventoryItemGql(self.0.inventory_item_id)
    }
}

#[derive(SimpleObject, Clone)]
#[graphql(name = "Product")]
pub struct ProductRef {
    id: ID,
}

#[derive(Clone, Copy)]
pub struct InventoryItemGql(u64);

#[Object(name = "InventoryItem")]
impl InventoryItemGql {
    async fn id(&self) -> ID {
        gid("InventoryItem", self.0).into()
    }
    async fn sku(&self, ctx: &Context<'_>) -> Option<String> {
        shop(ctx)
            .state
            .lock()
            .variant_by_item(self.0)
            .map(|v| v.sku.clone())
    }
    async fn variant(&self, ctx: &Context<'_>) -> Option<ProductVariantGql> {
        shop(ctx)
            .state
            .lock()
            .variant_by_item(self.0)
            .cloned()
            .map(ProductVariantGql)
    }
    async fn inventory_level(
        &self,
        ctx: &Context<'_>,
        location_id: ID,
    ) -> Result<Option<InventoryLevelGql>> {
        let loc =
            parse_gid("Location", &location_id).ok_or_else(|| bad_id("Location", &location_id))?;
        let st = shop(ctx).state.lock();
        Ok(st.levels.get(&(self.0, loc)).map(|l| InventoryLevelGql {
            item: self.0,
            location: loc,
            level: *l,
        }))
    }
    async fn inventory_levels(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
    ) -> Result<Connection<usize, InventoryLevelGql>> {
        let levels: Vec<InventoryLevelGql> = {
            let st = shop(ctx).state.lock();
            st.levels
                .range((self.0, 0)..=(self.0, u64::MAX))
                .map(|(&(item, location), &level)| InventoryLevelGql {
                    item,
                    location,
                    level,
                })
                .collect()
        };
        paginate(levels, after, first, last).await
    }
}

#[derive(Clone, Copy)]
pub struct InventoryLevelGql {
    item: u64,
    location: u64,
    level: Level,
}

#[derive(SimpleObject, Clone)]
pub struct InventoryQuantity {
    name: String,
    quantity: i64,
}

#[Object(name = "InventoryLevel")]
impl InventoryLevelGql {
    async fn id(&self) -> ID {
        gid("InventoryLevel", self.item * 1_000_000 + self.location).into()
    }
    async fn item(&self) -> InventoryItemGql {
        InventoryItemGql(self.item)
    }
    async fn location(&self, ctx: &Context<'_>) -> Option<LocationGql> {
        shop(ctx)
            .state
            .lock()
            .locations
            .get(&self.location)
            .cloned()
            .map(LocationGql)
    }
    /// `available`, `on_hand`, `committed`.
    async fn quantities(&self, names: Vec<String>) -> Vec<InventoryQuantity> {
        names
            .into_iter()
            .filter_map(|name| {
                let quantity = match name.as_str() {
                    "available" => self.level.available,
                    "on_hand" => self.level.on_hand(),
                    "committed" => self.level.committed,
                    _ => return None,
                };
                Some(InventoryQuantity { name, quantity })
            })
            .collect()
    }
}

#[derive(Clone)]
pub struct LocationGql(Location);

#[Object(name = "Location")]
impl LocationGql {
    async fn id(&self) -> ID {
        gid("Location", self.0.id).into()
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn inventory_levels(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
    ) -> Result<Connection<usize, InventoryLevelGql>> {
        let levels: Vec<InventoryLevelGql> = {
            let st = shop(ctx).state.lock();
            st.levels
                .iter()
                .filter(|((_, loc), _)| *loc == self.0.id)
                .map(|(&(item, location), &level)| InventoryLevelGql {
                    item,
                    location,
                    level,
                })
                .collect()
        };
        paginate(levels, after, first, last).await
    }
}

#[derive(SimpleObject, Clone)]
pub struct TrackingInfo {
    number: Option<String>,
    company: Option<String>,
}

#[derive(SimpleObject, Clone)]
#[graphql(name = "Fulfillment")]
pub struct FulfillmentGql {
    id: ID,
    status: String,
    tracking_info: Vec<TrackingInfo>,
    created_at: String,
}

#[derive(SimpleObject, Clone)]
#[graphql(name = "LineItem")]
pub struct LineItemGql {
    id: ID,
    sku: Option<String>,
    title: String,
    quantity: i64,
    original_unit_price_set: MoneyBag,
}

#[derive(SimpleObject, Clone)]
#[graphql(name = "Customer")]
pub struct CustomerGql {
    id: ID,
    email: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
}

#[derive(SimpleObject, Clone)]
#[graphql(name = "MailingAddress")]
pub struct AddressGql {
    first_name: Option<String>,
    last_name: Option<String>,
    address1: Option<String>,
    city: Option<String>,
    zip: Option<String>,
    country_code_v2: Option<String>,
}

#[derive(SimpleObject, Clone)]
#[graphql(name = "FulfillmentOrder")]
pub struct FulfillmentOrderGql {
    id: ID,
    status: String,
    /// Where the order's stock is committed and ships from.
    assigned_location: Option<AssignedLocationGql>,
}

#[derive(SimpleObject, Clone)]
#[graphql(name = "FulfillmentOrderAssignedLocation")]
pub struct AssignedLocationGql {
    location: Option<LocationGql>,
}

#[derive(Clone)]
pub struct OrderGql(Order);

fn money(amount: String, currency: &str) -> MoneyBag {
    MoneyBag {
        shop_money: MoneyV2 {
            amount,
            currency_code: currency.to_owned(),
        },
    }
}

#[Object(name = "Order")]
impl OrderGql {
    async fn id(&self) -> ID {
        gid("Order", self.0.id).into()
    }
    async fn legacy_resource_id(&self) -> String {
        self.0.id.to_string()
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn email(&self) -> &str {
        &self.0.email
    }
    async fn created_at(&self) -> &str {
        &self.0.created_at
    }
    async fn updated_at(&self) -> &str {
        &self.0.updated_at
    }
    async fn cancelled_at(&self) -> Option<&str> {
        self.0.cancelled_at.as_deref()
    }
    async fn cancel_reason(&self) -> Option<String> {
        self.0.cancel_reason.as_ref().map(|r| r.to_uppercase())
    }
    async fn display_financial_status(&self) -> String {
        self.0.financial_status.to_uppercase()
    }
    async fn display_fulfillment_status(&self) -> String {
        self.0
            .fulfillment_status
            .as_deref()
            .unwrap_or("unfulfilled")
            .to_uppercase()
    }
    async fn total_price_set(&self) -> MoneyBag {
        money(self.0.total_price(), &self.0.currency)
    }
    async fn customer(&self) -> CustomerGql {
        let c = &self.0.customer;
        CustomerGql {
            id: gid("Customer", c.id).into(),
            email: Some(c.email.clone()),
            first_name: Some(c.first_name.clone()),
            last_name: Some(c.last_name.clone()),
        }
    }
    async fn shipping_address(&self) -> AddressGql {
        let a = &self.0.shipping_address;
        AddressGql {
            first_name: Some(a.first_name.clone()),
            last_name: Some(a.last_name.clone()),
            address1: Some(a.address1.clone()),
            city: Some(a.city.clone()),
            zip: Some(a.zip.clone()),
            country_code_v2: Some(a.country_code.clone()),
        }
    }
    async fn fulfillments(&self) -> Vec<FulfillmentGql> {
        self.0
            .fulfillments
            .iter()
            .map(|f| FulfillmentGql {
                id: gid("Fulfillment", f.id).into(),
                status: f.status.to_uppercase(),
                tracking_info: vec![TrackingInfo {
                    number: f.tracking_number.clone(),
                    company: f.tracking_company.clone(),
                }],
                created_at: f.created_at.clone(),
            })
            .collect()
    }
    async fn line_items(
        &self,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
    ) -> Result<Connection<usize, LineItemGql>> {
        let items = self
            .0
            .line_items
            .iter()
            .map(|l| LineItemGql {
                id: gid("LineItem", l.id).into(),
                sku: Some(l.sku.clone()),
                title: l.title.clone(),
                quantity: l.quantity,
                original_unit_price_set: money(l.price.clone(), &self.0.currency),
            })
            .collect();
        paginate(items, after, first, last).await
    }
    /// One fulfillment order per order, with the order's numeric id.
    async fn fulfillment_orders(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
    ) -> Result<Connection<usize, FulfillmentOrderGql>> {
        let status = if self.0.cancelled_at.is_some() {
            "CANCELLED"
        } else if self.0.fulfillment_status.is_some() {
            "CLOSED"
        } else {
            "OPEN"
        };
        let location = shop(ctx)
            .state
            .lock()
            .locations
            .get(&self.0.location_id)
            .cloned()
            .map(LocationGql);
        let fo = FulfillmentOrderGql {
            id: gid("FulfillmentOrder", self.0.id).into(),
            status: status.into(),
            assigned_location: Some(AssignedLocationGql { location }),
        };
        paginate(vec![fo], after, first, last).await
    }
}

// ---------------------------------------------------------------- query

pub struct QueryRoot;

#[Object]
impl QueryRoot {
    /// The app's newest bulk operation of a kind (queries by default; one of
    /// each kind runs at a time).
    async fn current_bulk_operation(
        &self,
        ctx: &Context<'_>,
        #[graphql(name = "type")] kind: Option<BulkOperationType>,
    ) -> Option<BulkOperationGql> {
        let kind = match kind {
            Some(BulkOperationType::Mutation) => crate::bulk::OpKind::Mutation,
            _ => crate::bulk::OpKind::Query,
        };
        let bulk = &shop(ctx).bulk;
        bulk.current(kind).map(|op| BulkOperationGql::of(op, bulk))
    }

    async fn shop(&self, ctx: &Context<'_>) -> ShopInfo {
        let s = shop(ctx);
        ShopInfo {
            name: s.shop_domain.trim_end_matches(".myshopify.com").to_owned(),
            myshopify_domain: s.shop_domain.clone(),
            currency_code: "EUR".into(),
        }
    }

    /// Variants; `query: "sku:A OR sku:B"` filters by SKU.
    async fn product_variants(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        query: Option<String>,
    ) -> Result<Connection<usize, ProductVariantGql>> {
        let skus = skus_in_query(&query);
        let variants: Vec<ProductVariantGql> = {
            let st = shop(ctx).state.lock();
            match skus {
                Some(skus) => skus
                    .iter()
                    .filter_map(|s| st.variant_by_sku(s).cloned())
                    .map(ProductVariantGql)
                    .collect(),
                None => st
                    .variants
                    .values()
                    .cloned()
                    .map(ProductVariantGql)
                    .collect(),
            }
        };
        paginate(variants, after, first, last).await
    }

    async fn product_variant(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> Result<Option<ProductVariantGql>> {
        let vid = parse_gid("ProductVariant", &id).ok_or_else(|| bad_id("ProductVariant", &id))?;
        Ok(shop(ctx)
            .state
            .lock()
            .variants
            .get(&vid)
            .cloned()
            .map(ProductVariantGql))
    }

    /// Inventory items; `query: "sku:A OR sku:B"` filters by SKU.
    async fn inventory_items(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        query: Option<String>,
    ) -> Result<Connection<usize, InventoryItemGql>> {
        let skus = skus_in_query(&query);
        let items: Vec<InventoryItemGql> = {
            let st = shop(ctx).state.lock();
            st.variants
                .values()
                .filter(|v| skus.as_ref().is_none_or(|s| s.contains(&v.sku)))
                .map(|v| InventoryItemGql(v.inventory_item_id))
                .collect()
        };
        paginate(items, after, first, last).await
    }

    /// One bulk operation of the app, by id (API version 2026-01 and later).
    async fn bulk_operation(&self, ctx: &Context<'_>, id: ID) -> Result<Option<BulkOperationGql>> {
        if shop(ctx)
            .no_bulk_operation_by_id
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(Error::new(
                "Field 'bulkOperation' doesn't exist on type 'QueryRoot'",
            ));
        }
        let op = parse_gid("BulkOperation", &id).ok_or_else(|| bad_id("BulkOperation", &id))?;
        let bulk = &shop(ctx).bulk;
        Ok(bulk.get(op).map(|op| BulkOperationGql::of(op, bulk)))
    }

    async fn inventory_item(&self, ctx: &Context<'_>, id: ID) -> Result<Option<InventoryItemGql>> {
        let item = parse_gid("InventoryItem", &id).ok_or_else(|| bad_id("InventoryItem", &id))?;
        Ok(shop(ctx)
            .state
            .lock()
            .variant_by_item(item)
            .map(|_| InventoryItemGql(item)))
    }

    async fn locations(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
    ) -> Result<Connection<usize, LocationGql>> {
        let locations = read(ctx, |st| {
            st.locations.values().cloned().map(LocationGql).collect()
        });
        paginate(locations, after, first, last).await
    }

    async fn location(&self, ctx: &Context<'_>, id: ID) -> Result<Option<LocationGql>> {
        let loc = parse_gid("Location", &id).ok_or_else(|| bad_id("Location", &id))?;
        Ok(read(ctx, |st| {
            st.locations.get(&loc).cloned().map(LocationGql)
        }))
    }

    async fn order(&self, ctx: &Context<'_>, id: ID) -> Result<Option<OrderGql>> {
        let oid = parse_gid("Order", &id).ok_or_else(|| bad_id("Order", &id))?;
        Ok(read(ctx, |st| st.orders.get(&oid).cloned().map(OrderGql)))
    }

    async fn orders(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
    ) -> Result<Connection<usize, OrderGql>> {
        let orders = read(ctx, |st| {
            st.orders.values().cloned().map(OrderGql).collect()
        });
        paginate(orders, after, first, last).await
    }
}

// ---------------------------------------------------------------- mutations

#[derive(InputObject, Debug)]
pub struct InventoryQuantityInput {
    inventory_item_id: ID,
    location_id: ID,
    quantity: i32,
    /// The quantity the caller believes is current. Required as of 2026-04;
    /// an explicit null opts out of the check.
    change_from_quantity: MaybeUndefined<i32>,
}

#[derive(InputObject, Debug)]
pub struct InventorySetQuantitiesInput {
    /// `available` or `on_hand`.
    name: String,
    reason: String,
    reference_document_uri: Option<String>,
    quantities: Vec<InventoryQuantityInput>,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum InventorySetQuantitiesUserErrorCode {
    ChangeFromQuantityStale,
    IdempotencyConcurrentRequest,
    IdempotencyKeyParameterMismatch,
    InvalidInventoryItem,
    InvalidLocation,
    InvalidName,
    InvalidReason,
    InvalidQuantityNegative,
    ChangeFromQuantityRequired,
    ItemNotStockedAtLocation,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct InventorySetQuantitiesUserError {
    code: Option<InventorySetQuantitiesUserErrorCode>,
    field: Option<Vec<String>>,
    message: String,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct InventoryChange {
    name: String,
    delta: i64,
    quantity_after_change: i64,
    item_id: ID,
    location_id: ID,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct InventoryAdjustmentGroup {
    id: ID,
    reason: String,
    created_at: String,
    changes: Vec<InventoryChange>,
}

#[derive(SimpleObject, Clone, Debug)]
pub struct InventorySetQuantitiesPayload {
    inventory_adjustment_group: Option<InventoryAdjustmentGroup>,
    user_errors: Vec<InventorySetQuantitiesUserError>,
}

fn set_error(
    code: InventorySetQuantitiesUserErrorCode,
    field: Vec<String>,
    message: impl Into<String>,
) -> InventorySetQuantitiesPayload {
    InventorySetQuantitiesPayload {
        inventory_adjustment_group: None,
        user_errors: vec![InventorySetQuantitiesUserError {
            code: Some(code),
            field: Some(field),
            message: message.into(),
        }],
    }
}

#[derive(InputObject, Debug)]
pub struct ProductVariantsBulkInput {
    id: ID,
    price: Option<String>,
    compare_at_price: MaybeUndefined<String>,
}

#[derive(Enum, Clone, Copy, PartialEq, Eq)]
pub enum BulkOperationType {
    Query,
    Mutation,
}

/// A bulk operation as Shopify shows it (counts are `UnsignedInt64`, which
/// Shopify serialises as strings).
#[derive(SimpleObject)]
#[graphql(name = "BulkOperation")]
pub struct BulkOperationGql {
    id: ID,
    status: String,
    #[graphql(name = "type")]
    kind: String,
    query: String,
    error_code: Option<String>,
    object_count: String,
    root_object_count: String,
    file_size: Option<String>,
    url: Option<String>,
    partial_data_url: Option<String>,
    created_at: String,
    completed_at: Option<String>,
}

impl BulkOperationGql {
    fn of(op: crate::bulk::BulkOp, bulk: &crate::bulk::BulkOps) -> Self {
        // Like Shopify: no file when nothing matched.
        let url = (op.status == "COMPLETED" && op.object_count > 0).then(|| bulk.url(op.id));
        BulkOperationGql {
            id: ID(gid("BulkOperation", op.id)),
            status: op.status.to_owned(),
            kind: op.kind.as_str().to_owned(),
            query: op.query,
            error_code: op.error_code,
            object_count: op.object_count.to_string(),
            root_object_count: op.root_object_count.to_string(),
            file_size: op.file_size.map(|n| n.to_string()),
            url,
            partial_data_url: None,
            created_at: op.created_at,
            completed_at: op.completed_at,
        }
    }
}

#[derive(SimpleObject)]
pub struct BulkOperationRunMutationPayload {
    bulk_operation: Option<BulkOperationGql>,
    user_errors: Vec<UserError>,
}

/// What `stagedUploadsCreate` can stage here: a bulk mutation's variables.
#[derive(Enum, Clone, Copy, PartialEq, Eq)]
pub enum StagedUploadTargetGenerateUploadResource {
    BulkMutationVariables,
    Image,
    File,
    Video,
}

#[derive(Enum, Clone, Copy, PartialEq, Eq)]
pub enum StagedUploadHttpMethodType {
    Post,
    Put,
}

#[derive(InputObject)]
pub struct StagedUploadInput {
    resource: StagedUploadTargetGenerateUploadResource,
    filename: String,
    mime_type: String,
    http_method: Option<StagedUploadHttpMethodType>,
    file_size: Option<String>,
}

#[derive(SimpleObject)]
pub struct StagedUploadParameter {
    name: String,
    value: String,
}

#[derive(SimpleObject)]
pub struct StagedMediaUploadTarget {
    url: Option<String>,
    resource_url: Option<String>,
    parameters: Vec<StagedUploadParameter>,
}

#[derive(SimpleObject)]
pub struct StagedUploadsCreatePayload {
    staged_targets: Option<Vec<StagedMediaUploadTarget>>,
    user_errors: Vec<UserError>,
}

#[derive(SimpleObject)]
pub struct BulkOperationRunQueryPayload {
    bulk_operation: Option<BulkOperationGql>,
    user_errors: Vec<UserError>,
}

#[derive(SimpleObject, Clone)]
pub struct UserError {
    field: Option<Vec<String>>,
    message: String,
    code: Option<String>,
}

/// A bulk mutation runs exactly one mutation field, and not one that starts
/// or stages other bulk work.
fn bulk_mutation_shape(mutation: &str) -> Result<(), String> {
    use async_graphql::parser::types::{DocumentOperations, OperationType, Selection};
    let doc = async_graphql::parser::parse_query(mutation)
        .map_err(|e| format!("Invalid mutation: {e}"))?;
    let op = match &doc.operations {
        DocumentOperations::Single(op) => op,
        DocumentOperations::Multiple(_) => return Err("one operation, please".into()),
    };
    if op.node.ty != OperationType::Mutation {
        return Err("a bulk mutation must be a mutation".into());
    }
    let fields: Vec<&str> = op
        .node
        .selection_set
        .node
        .items
        .iter()
        .filter_map(|s| match &s.node {
            Selection::Field(f) => Some(f.node.name.node.as_str()),
            _ => None,
        })
        .collect();
    match fields.as_slice() {
        [f] if !f.starts_with("bulkOperation") && *f != "stagedUploadsCreate" => Ok(()),
        [f] => Err(format!("{f} cannot run in bulk")),
        _ => Err("a bulk mutation runs exactly one mutation field".into()),
    }
}

fn user_error(field: &[&str], message: impl Into<String>, code: &str) -> UserError {
    UserError {
        field: Some(field.iter().map(|s| s.to_string()).collect()),
        message: message.into(),
        code: Some(code.into()),
    }
}

#[derive(SimpleObject)]
pub struct ProductVariantsBulkUpdatePayload {
    product: Option<ProductRef>,
    product_variants: Option<Vec<ProductVariantGql>>,
    user_errors: Vec<UserError>,
}

#[derive(InputObject)]
pub struct FulfillmentOrderLineItemsInput {
    fulfillment_order_id: ID,
}

#[derive(InputObject)]
pub struct FulfillmentTrackingInput {
    number: Option<String>,
    company: Option<String>,
    url: Option<String>,
}

#[derive(InputObject)]
pub struct FulfillmentInput {
    line_items_by_fulfillment_order: Vec<FulfillmentOrderLineItemsInput>,
    tracking_info: Option<FulfillmentTrackingInput>,
    notify_customer: Option<bool>,
}

#[derive(SimpleObject)]
pub struct FulfillmentCreatePayload {
    fulfillment: Option<FulfillmentGql>,
    user_errors: Vec<UserError>,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub enum OrderCancelReason {
    Customer,
    Declined,
    Fraud,
    Inventory,
    Other,
    Staff,
}

#[derive(SimpleObject)]
pub struct Job {
    id: ID,
    done: bool,
}

#[derive(SimpleObject)]
pub struct OrderCancelPayload {
    job: Option<Job>,
    order_cancel_user_errors: Vec<UserError>,
    user_errors: Vec<UserError>,
}

#[derive(InputObject)]
pub struct OrderMarkAsPaidInput {
    id: ID,
}

#[derive(SimpleObject)]
pub struct OrderMarkAsPaidPayload {
    order: Option<OrderGql>,
    user_errors: Vec<UserError>,
}

#[derive(InputObject)]
pub struct WebhookSubscriptionInput {
    /// 2026-04 name of the endpoint.
    uri: Option<String>,
    /// Older name, still accepted.
    callback_url: Option<String>,
}

#[derive(SimpleObject)]
pub struct WebhookSubscription {
    id: ID,
    topic: String,
    uri: String,
}

#[derive(SimpleObject)]
pub struct WebhookSubscriptionCreatePayload {
    webhook_subscription: Option<WebhookSubscription>,
    user_errors: Vec<UserError>,
}

pub struct MutationRoot;

#[Object]
impl MutationRoot {
    /// Starts a bulk query; its result is read through `currentBulkOperation`.
    async fn bulk_operation_run_query(
        &self,
        ctx: &Context<'_>,
        query: String,
        group_objects: Option<bool>,
    ) -> BulkOperationRunQueryPayload {
        let _ = group_objects;
        let s = shop(ctx);
        let refuse = |message: String, code: &str| BulkOperationRunQueryPayload {
            bulk_operation: None,
            user_errors: vec![user_error(&["query"], message, code)],
        };
        if let Err(e) = async_graphql::parser::parse_query(&query) {
            return refuse(format!("Invalid bulk query: {e}"), "INVALID");
        }
        let id = s.state.lock().new_id();
        match s
            .bulk
            .start(id, crate::bulk::OpKind::Query, query, None, now_rfc3339())
        {
            Ok(op) => BulkOperationRunQueryPayload {
                bulk_operation: Some(BulkOperationGql::of(op, &s.bulk)),
                user_errors: vec![],
            },
            Err(running) => refuse(
                format!(
                    "A bulk query operation for this app and shop is already in progress: {}.",
                    gid("BulkOperation", running)
                ),
                "OPERATION_IN_PROGRESS",
            ),
        }
    }

    /// Stages uploads: where to POST a bulk mutation's variables file (a
    /// multipart form: every parameter, then `file`), and the `key` parameter
    /// that names it to `bulkOperationRunMutation`.
    async fn staged_uploads_create(
        &self,
        ctx: &Context<'_>,
        input: Vec<StagedUploadInput>,
    ) -> StagedUploadsCreatePayload {
        let s = shop(ctx);
        let mut targets = Vec::new();
        for (i, upload) in input.into_iter().enumerate() {
            if upload.resource != StagedUploadTargetGenerateUploadResource::BulkMutationVariables {
                return StagedUploadsCreatePayload {
                    staged_targets: None,
                    user_errors: vec![user_error(
                        &["input", &i.to_string(), "resource"],
                        "the simulator stages bulk mutation variables only",
                        "INVALID",
                    )],
                };
            }
            let _ = (upload.http_method, upload.file_size);
            let token = s.state.lock().new_id();
            let key = format!("tmp/{token}/bulk/{token}/{}", upload.filename);
            s.bulk.stage(key.clone());
            targets.push(StagedMediaUploadTarget {
                url: Some(s.bulk.upload_url()),
                resource_url: None,
                parameters: vec![
                    StagedUploadParameter {
                        name: "key".into(),
                        value: key,
                    },
                    StagedUploadParameter {
                        name: "Content-Type".into(),
                        value: upload.mime_type,
                    },
                    StagedUploadParameter {
                        name: "success_action_status".into(),
                        value: "201".into(),
                    },
                ],
            });
        }
        StagedUploadsCreatePayload {
            staged_targets: Some(targets),
            user_errors: vec![],
        }
    }

    /// Starts a bulk mutation over an uploaded variables file; its result is
    /// read through `currentBulkOperation(type: MUTATION)`.
    async fn bulk_operation_run_mutation(
        &self,
        ctx: &Context<'_>,
        mutation: String,
        staged_upload_path: String,
        client_identifier: Option<String>,
        group_objects: Option<bool>,
    ) -> BulkOperationRunMutationPayload {
        let _ = (client_identifier, group_objects);
        let s = shop(ctx);
        let refuse = |field: &str, message: String, code: &str| BulkOperationRunMutationPayload {
            bulk_operation: None,
            user_errors: vec![user_error(&[field], message, code)],
        };
        if let Err(reason) = bulk_mutation_shape(&mutation) {
            return refuse("mutation", reason, "INVALID_MUTATION");
        }
        let Some(file) = s.bulk.upload(&staged_upload_path) else {
            return refuse(
                "stagedUploadPath",
                format!("no file was uploaded at {staged_upload_path}"),
                "NO_SUCH_FILE",
            );
        };
        if let Some((n, e)) = file
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .find_map(
                |(n, l)| match serde_json::from_str::<serde_json::Value>(l) {
                    Ok(v) if v.is_object() => None,
                    Ok(_) => Some((n, "not an object of variables".to_owned())),
                    Err(e) => Some((n, e.to_string())),
                },
            )
        {
            return refuse(
                "stagedUploadPath",
                format!("Unexpected file structure - expected JSONL (line {n}: {e})"),
                "INVALID_STAGED_UPLOAD_FILE",
            );
        }
        let id = s.state.lock().new_id();
        match s.bulk.start(
            id,
            crate::bulk::OpKind::Mutation,
            mutation,
            Some(staged_upload_path),
            now_rfc3339(),
        ) {
            Ok(op) => BulkOperationRunMutationPayload {
                bulk_operation: Some(BulkOperationGql::of(op, &s.bulk)),
                user_errors: vec![],
            },
            Err(running) => refuse(
                "mutation",
                format!(
                    "A bulk mutation operation for this app and shop is already in progress: {}.",
                    gid("BulkOperation", running)
                ),
                "OPERATION_IN_PROGRESS",
            ),
        }
    }

    /// Sets absolute quantities, compare-before-write, all or nothing.
    async fn inventory_set_quantities(
        &self,
        ctx: &Context<'_>,
        input: InventorySetQuantitiesInput,
    ) -> Result<InventorySetQuantitiesPayload> {
        use InventorySetQuantitiesUserErrorCode as Code;
        if input.quantities.len() > MAX_PAGE {
            return Err(Error::new(format!(
                "The input array size of {} is greater than the maximum allowed of {MAX_PAGE}.",
                input.quantities.len()
            ))
            .extend_with(|_, e| e.set("code", "MAX_INPUT_SIZE_EXCEEDED")));
        }
        let s = shop(ctx);
        let key = ctx
            .field()
            .directives()?
            .into_iter()
            .find(|d| d.name.node == "idempotent")
            .and_then(|d| {
                d.arguments
                    .into_iter()
                    .find(|(n, _)| n.node == "key")
                    .and_then(|(_, v)| match v.node {
                        async_graphql::Value::String(k) => Some(k),
                        _ => None,
                    })
            });
        let fingerprint = format!("{input:?}");
        if let Some(key) = &key {
            let mut idem = s.idempotency.lock();
            match idem.get(key) {
                Some(Idempotent::InProgress { .. }) => {
                    return Ok(set_error(
                        Code::IdempotencyConcurrentRequest,
                        vec![],
                        "A request with this idempotency key is already in progress.",
                    ));
                }
                Some(Idempotent::Done { fingerprint: f, .. }) if *f != fingerprint => {
                    return Ok(set_error(
                        Code::IdempotencyKeyParameterMismatch,
                        vec![],
                        "The idempotency key was already used with different parameters.",
                    ));
                }
                Some(Idempotent::Done { payload, .. }) => return Ok(payload.clone()),
                None => {
                    idem.insert(
                        key.clone(),
                        Idempotent::InProgress {
                            fingerprint: fingerprint.clone(),
                        },
                    );
                }
            }
        }
        s.carry_out("inventorySetQuantities", move |s| {
            let payload = apply_set_quantities(s, &input);
            if let Some(key) = key {
                s.idempotency.lock().insert(
                    key,
                    Idempotent::Done {
                        fingerprint,
                        payload: payload.clone(),
                    },
                );
            }
            payload
        })
        .await
    }

    async fn product_variants_bulk_update(
        &self,
        ctx: &Context<'_>,
        product_id: ID,
        variants: Vec<ProductVariantsBulkInput>,
    ) -> Result<ProductVariantsBulkUpdatePayload> {
        shop(ctx)
            .carry_out("productVariantsBulkUpdate", move |s| {
                variants_bulk_update(s, product_id, variants)
            })
            .await?
    }

    async fn fulfillment_create(
        &self,
        ctx: &Context<'_>,
        fulfillment: FulfillmentInput,
        message: Option<String>,
    ) -> Result<FulfillmentCreatePayload> {
        let _ = (message, fulfillment.notify_customer);
        let s = shop(ctx);
        let Some(fo) = fulfillment.line_items_by_fulfillment_order.first() else {
            return Ok(FulfillmentCreatePayload {
                fulfillment: None,
                user_errors: vec![user_error(
                    &["fulfillment"],
                    "No fulfillment order given",
                    "INVALID",
                )],
            });
        };
        let order_id = parse_gid("FulfillmentOrder", &fo.fulfillment_order_id)
            .ok_or_else(|| bad_id("FulfillmentOrder", &fo.fulfillment_order_id))?;
        let (number, company) = match fulfillment.tracking_info {
            Some(t) => {
                let _ = t.url;
                (t.number, t.company)
            }
            None => (None, None),
        };
        let result = s.state.lock().fulfil(order_id, number, company);
        match result {
            Err(reason) => Ok(FulfillmentCreatePayload {
                fulfillment: None,
                user_errors: vec![user_error(&["fulfillment"], reason, "INVALID")],
            }),
            Ok((fid, emitted)) => {
                let f = {
                    let st = s.state.lock();
                    st.orders
                        .get(&order_id)
                        .and_then(|o| o.fulfillments.iter().find(|f| f.id == fid).cloned())
                };
                s.emit_all(emitted);
                Ok(FulfillmentCreatePayload {
                    fulfillment: f.map(|f| FulfillmentGql {
                        id: gid("Fulfillment", f.id).into(),
                        status: f.status.to_uppercase(),
                        tracking_info: vec![TrackingInfo {
                            number: f.tracking_number,
                            company: f.tracking_company,
                        }],
                        created_at: f.created_at,
                    }),
                    user_errors: vec![],
                })
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn order_cancel(
        &self,
        ctx: &Context<'_>,
        order_id: ID,
        reason: OrderCancelReason,
        restock: bool,
        refund: Option<bool>,
        notify_customer: Option<bool>,
        staff_note: Option<String>,
    ) -> Result<OrderCancelPayload> {
        let _ = (refund, notify_customer, staff_note);
        let s = shop(ctx);
        let oid = parse_gid("Order", &order_id).ok_or_else(|| bad_id("Order", &order_id))?;
        let reason = async_graphql::Value::from(reason)
            .to_string()
            .trim_matches('"')
            .to_owned();
        let result = s.state.lock().cancel(oid, &reason, restock);
        match result {
            Err(message) => {
                let e = user_error(&["orderId"], message, "INVALID");
                Ok(OrderCancelPayload {
                    job: None,
                    order_cancel_user_errors: vec![e.clone()],
                    user_errors: vec![e],
                })
            }
            Ok(emitted) => {
                s.emit_all(emitted);
                Ok(OrderCancelPayload {
                    job: Some(Job {
                        id: gid("Job", oid).into(),
                        done: true,
                    }),
                    order_cancel_user_errors: vec![],
                    user_errors: vec![],
                })
            }
        }
    }

    async fn order_mark_as_paid(
        &self,
        ctx: &Context<'_>,
        input: OrderMarkAsPaidInput,
    ) -> Result<OrderMarkAsPaidPayload> {
        let s = shop(ctx);
        let oid = parse_gid("Order", &input.id).ok_or_else(|| bad_id("Order", &input.id))?;
        let result = s.state.lock().mark_paid(oid);
        match result {
            Err(message) => Ok(OrderMarkAsPaidPayload {
                order: None,
                user_errors: vec![user_error(&["id"], message, "INVALID")],
            }),
            Ok(emitted) => {
                s.emit_all(emitted);
                let order = s.state.lock().orders.get(&oid).cloned().map(OrderGql);
                Ok(OrderMarkAsPaidPayload {
                    order,
                    user_errors: vec![],
                })
            }
        }
    }

    async fn webhook_subscription_create(
        &self,
        ctx: &Context<'_>,
        topic: String,
        webhook_subscription: WebhookSubscriptionInput,
    ) -> Result<WebhookSubscriptionCreatePayload> {
        let s = shop(ctx);
        let Some(t) = Topic::parse(&topic) else {
            return Ok(WebhookSubscriptionCreatePayload {
                webhook_subscription: None,
                user_errors: vec![user_error(
                    &["topic"],
                    format!("Unsupported topic {topic}"),
                    "INVALID",
                )],
            });
        };
        let Some(uri) = webhook_subscription
            .uri
            .or(webhook_subscription.callback_url)
        else {
            return Ok(WebhookSubscriptionCreatePayload {
                webhook_subscription: None,
                user_errors: vec![user_error(
                    &["webhookSubscription", "uri"],
                    "uri is required",
                    "INVALID",
                )],
            });
        };
        let id = s.state.lock().new_id();
        let sub = s.webhooks.subscribe(id, t, uri);
        Ok(WebhookSubscriptionCreatePayload {
            webhook_subscription: Some(WebhookSubscription {
                id: gid("WebhookSubscription", sub.id).into(),
                topic: t.graphql_name(),
                uri: sub.callback_url,
            }),
            user_errors: vec![],
        })
    }
}

/// `productVariantsBulkUpdate`: all of it or nothing.
fn variants_bulk_update(
    s: &Shop,
    product_id: ID,
    variants: Vec<ProductVariantsBulkInput>,
) -> Result<ProductVariantsBulkUpdatePayload> {
    let pid = parse_gid("Product", &product_id).ok_or_else(|| bad_id("Product", &product_id))?;
    let mut guard = s.state.lock();
    // Through a plain reference, so that two of its fields can be borrowed at once.
    let st = &mut *guard;
    let fail = |e: UserError| ProductVariantsBulkUpdatePayload {
        product: None,
        product_variants: None,
        user_errors: vec![e],
    };
    if !st.products.contains_key(&pid) {
        return Ok(fail(user_error(
            &["productId"],
            "Product does not exist",
            "PRODUCT_DOES_NOT_EXIST",
        )));
    }
    // Validate everything first: all or nothing.
    for (i, v) in variants.iter().enumerate() {
        let idx = i.to_string();
        let Some(vid) = parse_gid("ProductVariant", &v.id) else {
            return Ok(fail(user_error(
                &["variants", &idx, "id"],
                "Invalid variant id",
                "INVALID",
            )));
        };
        if st.variants.get(&vid).map(|x| x.product_id) != Some(pid) {
            return Ok(fail(user_error(
                &["variants", &idx, "id"],
                "Product variant does not exist on this product",
                "PRODUCT_VARIANT_DOES_NOT_EXIST",
            )));
        }
        for amount in v.price.iter().chain(v.compare_at_price.value()) {
            if amount.parse::<f64>().map_or(true, |a| a < 0.0) {
                return Ok(fail(user_error(
                    &["variants", &idx, "price"],
                    format!("'{amount}' is not a valid amount"),
                    "INVALID",
                )));
            }
        }
    }
    let now = crate::state::now_rfc3339_seconds();
    let mut updated = Vec::new();
    for v in &variants {
        let vid = parse_gid("ProductVariant", &v.id).unwrap_or_default();
        if let Some(var) = st.variants.get_mut(&vid) {
            if let Some(p) = &v.price {
                var.price = format_cents(parse_cents(p));
                st.price_history
                    .entry(vid)
                    .or_default()
                    .push(var.price.clone());
            }
            match &v.compare_at_price {
                MaybeUndefined::Value(c) => {
                    var.compare_at_price = Some(format_cents(parse_cents(c)))
                }
                MaybeUndefined::Null => var.compare_at_price = None,
                MaybeUndefined::Undefined => {}
            }
            var.updated_at = now.clone();
            updated.push(ProductVariantGql(var.clone()));
        }
    }
    if let Some(p) = st.products.get_mut(&pid) {
        p.updated_at = now;
    }
    let payload = st.product_payload(pid);
    drop(guard);
    s.webhooks.emit(Topic::ProductsUpdate, &payload);
    Ok(ProductVariantsBulkUpdatePayload {
        product: Some(ProductRef { id: product_id }),
        product_variants: Some(updated),
        user_errors: vec![],
    })
}

/// Validates every quantity (ids, compare-before-write) and then applies all of
/// them, or none.
fn apply_set_quantities(
    s: &Shop,
    input: &InventorySetQuantitiesInput,
) -> InventorySetQuantitiesPayload {
    use InventorySetQuantitiesUserErrorCode as Code;
    if input.name != "available" && input.name != "on_hand" {
        return set_error(
            Code::InvalidName,
            vec!["input".into(), "name".into()],
            "The quantity name must be 'available' or 'on_hand'.",
        );
    }
    if input.reason.trim().is_empty() {
        return set_error(
            Code::InvalidReason,
            vec!["input".into(), "reason".into()],
            "A reason is required.",
        );
    }
    let mut st = s.state.lock();
    let mut targets = Vec::with_capacity(input.quantities.len());
    for (i, q) in input.quantities.iter().enumerate() {
        let field = |f: &str| vec!["input".into(), "quantities".into(), i.to_string(), f.into()];
        let Some(item) = parse_gid("InventoryItem", &q.inventory_item_id)
            .filter(|id| st.variant_by_item(*id).is_some())
        else {
            return set_error(
                Code::InvalidInventoryItem,
                field("inventoryItemId"),
                "The specified inventory item could not be found.",
            );
        };
        let Some(loc) =
            parse_gid("Location", &q.location_id).filter(|id| st.locations.contains_key(id))
        else {
            return set_error(
                Code::InvalidLocation,
                field("locationId"),
                "The specified location could not be found.",
            );
        };
        let Some(level) = st.levels.get(&(item, loc)).copied() else {
            return set_error(
                Code::ItemNotStockedAtLocation,
                field("locationId"),
                "The item is not stocked at the location.",
            );
        };
        if input.name == "on_hand" && q.quantity < 0 {
            return set_error(
                Code::InvalidQuantityNegative,
                field("quantity"),
                "On hand quantities cannot be negative.",
            );
        }
        let current = if input.name == "available" {
            level.available
        } else {
            level.on_hand()
        };
        match &q.change_from_quantity {
            MaybeUndefined::Undefined => {
                return set_error(
                    Code::ChangeFromQuantityRequired,
                    field("changeFromQuantity"),
                    "changeFromQuantity is required; pass null to opt out of the check.",
                );
            }
            MaybeUndefined::Value(expected) if *expected as i64 != current => {
                return set_error(
                    Code::ChangeFromQuantityStale,
                    field("changeFromQuantity"),
                    format!(
                        "The specified compare quantity {expected} does not match the current quantity {current}."
                    ),
                );
            }
            _ => {}
        }
        targets.push((item, loc, q.quantity as i64, current));
    }
    let mut changes = Vec::new();
    let mut emitted = Vec::new();
    for (item, loc, quantity, before) in targets {
        st.set_history
            .entry((item, loc))
            .or_default()
            .push(quantity);
        let level = st.levels.entry((item, loc)).or_default();
        if input.name == "available" {
            level.available = quantity;
        } else {
            level.available = quantity - level.committed;
        }
        changes.push(InventoryChange {
            name: input.name.clone(),
            delta: quantity - before,
            quantity_after_change: quantity,
            item_id: gid("InventoryItem", item).into(),
            location_id: gid("Location", loc).into(),
        });
        if quantity != before {
            emitted.push(st.inventory_level_payload(item, loc));
        }
    }
    let group_id = st.new_id();
    drop(st);
    for payload in emitted {
        s.webhooks.emit(Topic::InventoryLevelsUpdate, &payload);
    }
    InventorySetQuantitiesPayload {
        inventory_adjustment_group: Some(InventoryAdjustmentGroup {
            id: gid("InventoryAdjustmentGroup", group_id).into(),
            reason: input.reason.clone(),
            created_at: now_rfc3339(),
            changes,
        }),
        user_errors: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sku_queries() {
        assert_eq!(
            skus_in_query(&Some("sku:A OR sku:'B-2'".into())),
            Some(vec!["A".to_string(), "B-2".to_string()])
        );
        assert_eq!(skus_in_query(&Some("title:x".into())), None);
        assert_eq!(skus_in_query(&None), None);
    }
}
