//! The shop's state: products with variants, inventory items and levels per
//! location, orders with fulfillments. Plain data behind one lock; every change
//! goes through a method that also returns the webhooks it triggers.

use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::webhooks::Topic;

pub fn gid(kind: &str, id: u64) -> String {
    format!("gid://shopify/{kind}/{id}")
}

/// The numeric id of a `gid://shopify/Kind/123`, checking the kind.
pub fn parse_gid(kind: &str, gid: &str) -> Option<u64> {
    gid.strip_prefix("gid://shopify/")?
        .strip_prefix(kind)?
        .strip_prefix('/')?
        .parse()
        .ok()
}

/// RFC 3339 UTC with milliseconds, as Shopify formats timestamps.
pub fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_millis() as i64)
}

/// RFC 3339 UTC in whole seconds, as Shopify stamps the `updated_at` of
/// products, variants, orders and inventory levels (its webhooks carry them;
/// the real samples have no fraction). Consumers that version by it must
/// allow for two changes within one second.
pub fn now_rfc3339_seconds() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}Z", date_time(d.as_secs() as i64))
}

pub fn rfc3339(unix_millis: i64) -> String {
    let ms = unix_millis.rem_euclid(1000);
    format!("{}.{ms:03}Z", date_time(unix_millis.div_euclid(1000)))
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time in seconds (UTC).
fn date_time(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Variant {
    pub id: u64,
    pub product_id: u64,
    pub sku: String,
    pub price: String,
    pub compare_at_price: Option<String>,
    pub inventory_item_id: u64,
    pub updated_at: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Product {
    pub id: u64,
    pub title: String,
    pub variant_ids: Vec<u64>,
    pub updated_at: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Location {
    pub id: u64,
    pub name: String,
}

/// Quantities of one inventory item at one location.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Level {
    pub available: i64,
    /// Reserved by unfulfilled orders; on_hand = available + committed.
    pub committed: i64,
}

impl Level {
    pub fn on_hand(&self) -> i64 {
        self.available + self.committed
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LineItem {
    pub id: u64,
    pub variant_id: u64,
    pub sku: String,
    pub title: String,
    pub quantity: i64,
    pub price: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Address {
    pub first_name: String,
    pub last_name: String,
    pub address1: String,
    pub city: String,
    pub zip: String,
    pub country_code: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Customer {
    pub id: u64,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fulfillment {
    pub id: u64,
    pub status: String,
    pub tracking_number: Option<String>,
    pub tracking_company: Option<String>,
    pub created_at: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Order {
    pub id: u64,
    pub name: String,
    pub email: String,
    pub created_at: String,
    pub updated_at: String,
    pub cancelled_at: Option<String>,
    pub cancel_reason: Option<String>,
    /// pending, paid, refunded, voided
    pub financial_status: String,
    /// None (unfulfilled) or "fulfilled"
    pub fulfillment_status: Option<String>,
    pub currency: String,
    pub line_items: Vec<LineItem>,
    pub customer: Customer,
    pub shipping_address: Address,
    pub billing_address: Address,
    pub fulfillments: Vec<Fulfillment>,
    /// Location the order's stock was committed at.
    pub location_id: u64,
}

impl Order {
    pub fn total_price(&self) -> String {
        let cents: i64 = self
            .line_items
            .iter()
            .map(|l| parse_cents(&l.price) * l.quantity)
            .sum();
        format_cents(cents)
    }
}

pub fn parse_cents(amount: &str) -> i64 {
    let (whole, frac) = amount.split_once('.').unwrap_or((amount, "0"));
    let whole: i64 = whole.parse().unwrap_or(0);
    let frac: String = format!("{frac:0<2}").chars().take(2).collect();
    whole * 100 + frac.parse::<i64>().unwrap_or(0)
}

pub fn format_cents(c: i64) -> String {
    format!("{}.{:02}", c / 100, (c % 100).abs())
}

/// A change that Shopify would announce by webhook.
#[derive(Clone, Debug)]
pub struct Emitted {
    pub topic: Topic,
    pub payload: Value,
}

#[derive(Default, Debug, Serialize, Deserialize)]
pub struct ShopState {
    pub products: BTreeMap<u64, Product>,
    pub variants: BTreeMap<u64, Variant>,
    pub locations: BTreeMap<u64, Location>,
    /// (inventory item, location) → level
    pub levels: BTreeMap<(u64, u64), Level>,
    /// (inventory item, location) → every quantity `inventorySetQuantities`
    /// set, in order, including sets to the value already there: tests read
    /// it to prove a write was never applied twice or out of order.
    #[serde(skip)]
    pub set_history: BTreeMap<(u64, u64), Vec<i64>>,
    /// Variant → every price `productVariantsBulkUpdate` set, in order,
    /// including sets to the price already there.
    #[serde(skip)]
    pub price_history: BTreeMap<u64, Vec<String>>,
    pub orders: BTreeMap<u64, Order>,
    /// Orders refused because a line's `available` was short (the shop does
    /// not sell what it does not have).
    pub refused_orders: u64,
    next_id: u64,
    /// SKU → variant and inventory item → variant, kept by `add_product` (the
    /// only place variants are created): a catalogue of 100,000 SKUs is
    /// searched by every lookup and every inventory write.
    #[serde(skip)]
    by_sku: HashMap<String, u64>,
    #[serde(skip)]
    by_item: HashMap<u64, u64>,
}

/// What to create a shop with.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Seed {
    /// (sku, price) for each product (one variant each).
    pub products: Vec<(String, String)>,
    pub locations: Vec<String>,
    /// Initial available quantity of every item at every location.
    pub initial_available: i64,
}

impl ShopState {
    pub fn new(seed: &Seed) -> ShopState {
        let mut s = ShopState {
            next_id: 1000,
            ..Default::default()
        };
        for name in &seed.locations {
            let id = s.new_id();
            s.locations.insert(
                id,
                Location {
                    id,
                    name: name.clone(),
                },
            );
        }
        for (sku, price) in &seed.products {
            s.add_product(sku, price, seed.initial_available);
        }
        s
    }

    /// A product with one variant (and inventory item) stocked with
    /// `available` at every location; returns the inventory item id.
    pub fn add_product(&mut self, sku: &str, price: &str, available: i64) -> u64 {
        let now = now_rfc3339_seconds();
        let product_id = self.new_id();
        let variant_id = self.new_id();
        let item_id = self.new_id();
        self.products.insert(
            product_id,
            Product {
                id: product_id,
                title: format!("Product {sku}"),
                variant_ids: vec![variant_id],
                updated_at: now.clone(),
            },
        );
        self.variants.insert(
            variant_id,
            Variant {
                id: variant_id,
                product_id,
                sku: sku.to_owned(),
                price: price.to_owned(),
                compare_at_price: None,
                inventory_item_id: item_id,
                updated_at: now,
            },
        );
        // The first variant of a SKU is the one found, as a scan would.
        self.by_sku.entry(sku.to_owned()).or_insert(variant_id);
        self.by_item.insert(item_id, variant_id);
        let locations: Vec<u64> = self.locations.keys().copied().collect();
        for loc in locations {
            self.levels.insert(
                (item_id, loc),
                Level {
                    available,
                    committed: 0,
                },
            );
        }
        item_id
    }

    /// Deletes a product with its variants, inventory items and levels.
    pub fn delete_product(&mut self, product_id: u64) {
        let Some(p) = self.products.remove(&product_id) else {
            return;
        };
        for vid in p.variant_ids {
            let Some(v) = self.variants.remove(&vid) else {
                continue;
            };
            self.by_item.remove(&v.inventory_item_id);
            self.levels
                .retain(|(item, _), _| *item != v.inventory_item_id);
            if self.by_sku.get(&v.sku) == Some(&vid) {
                self.by_sku.remove(&v.sku);
                // Another variant with the SKU is the one found now.
                if let Some(other) = self.variants.values().find(|o| o.sku == v.sku) {
                    self.by_sku.insert(v.sku.clone(), other.id);
                }
            }
        }
    }

    pub fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn variant_by_sku(&self, sku: &str) -> Option<&Variant> {
        self.variants.get(self.by_sku.get(sku)?)
    }

    pub fn variant_by_item(&self, item_id: u64) -> Option<&Variant> {
        self.variants.get(self.by_item.get(&item_id)?)
    }

    pub fn location_by_name(&self, name: &str) -> Option<&Location> {
        self.locations.values().find(|l| l.name == name)
    }

    pub fn inventory_level_payload(&self, item: u64, location: u64) -> Value {
        let level = self
            .levels
            .get(&(item, location))
            .copied()
            .unwrap_or_default();
        json!({
            "inventory_item_id": item,
            "location_id": location,
            "available": level.available,
            "updated_at": now_rfc3339_seconds(),
            "admin_graphql_api_id": gid("InventoryLevel", item * 1_000_000 + location),
        })
    }

    pub fn product_payload(&self, product_id: u64) -> Value {
        let Some(p) = self.products.get(&product_id) else {
            return Value::Null;
        };
        let variants: Vec<Value> = p
            .variant_ids
            .iter()
            .filter_map(|id| self.variants.get(id))
            .map(|v| {
                json!({
                    "id": v.id,
                    "product_id": v.product_id,
                    "sku": v.sku,
                    "price": v.price,
                    "compare_at_price": v.compare_at_price,
                    "inventory_item_id": v.inventory_item_id,
                    "updated_at": v.updated_at,
                    "admin_graphql_api_id": gid("ProductVariant", v.id),
                })
            })
            .collect();
        json!({
            "id": p.id,
            "title": p.title,
            "updated_at": p.updated_at,
            "admin_graphql_api_id": gid("Product", p.id),
            "variants": variants,
        })
    }

    /// An order as Shopify's `orders/*` webhooks carry it.
    pub fn order_payload(&self, order_id: u64) -> Value {
        let Some(o) = self.orders.get(&order_id) else {
            return Value::Null;
        };
        let address = |a: &Address| {
            json!({
                "first_name": a.first_name, "last_name": a.last_name, "address1": a.address1,
                "city": a.city, "zip": a.zip, "country_code": a.country_code,
            })
        };
        json!({
            "id": o.id,
            "admin_graphql_api_id": gid("Order", o.id),
            "name": o.name,
            "email": o.email,
            "created_at": o.created_at,
            "updated_at": o.updated_at,
            "cancelled_at": o.cancelled_at,
            "cancel_reason": o.cancel_reason,
            "financial_status": o.financial_status,
            "fulfillment_status": o.fulfillment_status,
            "currency": o.currency,
            "total_price": o.total_price(),
            "subtotal_price": o.total_price(),
            "total_tax": "0.00",
            "line_items": o.line_items.iter().map(|l| json!({
                "id": l.id,
                "admin_graphql_api_id": gid("LineItem", l.id),
                "variant_id": l.variant_id,
                "sku": l.sku,
                "title": l.title,
                "quantity": l.quantity,
                "price": l.price,
            })).collect::<Vec<_>>(),
            "customer": {
                "id": o.customer.id,
                "email": o.customer.email,
                "first_name": o.customer.first_name,
                "last_name": o.customer.last_name,
            },
            "shipping_address": address(&o.shipping_address),
            "billing_address": address(&o.billing_address),
            "fulfillments": o.fulfillments.iter().map(|f| json!({
                "id": f.id,
                "order_id": o.id,
                "status": f.status,
                "tracking_number": f.tracking_number,
                "tracking_numbers": f.tracking_number.iter().collect::<Vec<_>>(),
                "tracking_company": f.tracking_company,
                "created_at": f.created_at,
            })).collect::<Vec<_>>(),
        })
    }

    /// Places an order: commits its stock at `location_id` and returns the
    /// webhooks (orders/create, orders/paid when paid, inventory_levels/update).
    /// `None` (and counted in `refused_orders`) when a variant is unknown or a
    /// line wants more than is `available` there: the shop sells only what it has.
    pub fn place_order(
        &mut self,
        lines: &[(u64, i64)],
        customer_email: &str,
        location_id: u64,
        paid: bool,
    ) -> Option<(u64, Vec<Emitted>)> {
        let now = now_rfc3339_seconds();
        let mut items = Vec::new();
        let mut wanted: BTreeMap<u64, i64> = BTreeMap::new();
        for &(variant_id, qty) in lines {
            let v = self.variants.get(&variant_id)?.clone();
            *wanted.entry(v.inventory_item_id).or_default() += qty;
            items.push((v, qty));
        }
        let short = wanted.iter().any(|(item, qty)| {
            self.levels
                .get(&(*item, location_id))
                .is_none_or(|l| l.available < *qty)
        });
        if short {
            self.refused_orders += 1;
            return None;
        }
        let id = self.new_id();
        let mut line_items = Vec::new();
        let mut emitted = Vec::new();
        for (v, qty) in items {
            let line_id = self.new_id();
            line_items.push(LineItem {
                id: line_id,
                variant_id: v.id,
                sku: v.sku.clone(),
                title: format!("Product {}", v.sku),
                quantity: qty,
                price: v.price.clone(),
            });
            let level = self
                .levels
                .entry((v.inventory_item_id, location_id))
                .or_default();
            level.available -= qty;
            level.committed += qty;
            emitted.push(Emitted {
                topic: Topic::InventoryLevelsUpdate,
                payload: self.inventory_level_payload(v.inventory_item_id, location_id),
            });
        }
        let customer_id = self.new_id();
        let n = self.orders.len() + 1001;
        let address = Address {
            first_name: "Ada".into(),
            last_name: format!("Customer{customer_id}"),
            address1: format!("{n} Market Street"),
            city: "Springfield".into(),
            zip: "10115".into(),
            country_code: "DE".into(),
        };
        self.orders.insert(
            id,
            Order {
                id,
                name: format!("#{n}"),
                email: customer_email.into(),
                created_at: now.clone(),
                updated_at: now,
                cancelled_at: None,
                cancel_reason: None,
                financial_status: if paid { "paid" } else { "pending" }.into(),
                fulfillment_status: None,
                currency: "EUR".into(),
                line_items,
                customer: Customer {
                    id: customer_id,
                    email: customer_email.into(),
                    first_name: "Ada".into(),
                    last_name: format!("Customer{customer_id}"),
                },
                shipping_address: address.clone(),
                billing_address: address,
                fulfillments: Vec::new(),
                location_id,
            },
        );
        let payload = self.order_payload(id);
        let mut out = vec![Emitted {
            topic: Topic::OrdersCreate,
            payload: payload.clone(),
        }];
        if paid {
            out.push(Emitted {
                topic: Topic::OrdersPaid,
                payload,
            });
        }
        out.extend(emitted);
        Some((id, out))
    }

    /// Takes the order's lines out of committed stock; returns (item, location, quantity).
    fn release_committed(&mut self, order_id: u64) -> Vec<(u64, u64, i64)> {
        let Some(o) = self.orders.get(&order_id) else {
            return Vec::new();
        };
        let (loc, lines) = (o.location_id, o.line_items.clone());
        let mut released = Vec::new();
        for l in lines {
            if let Some(item) = self
                .variants
                .get(&l.variant_id)
                .map(|v| v.inventory_item_id)
            {
                self.levels.entry((item, loc)).or_default().committed -= l.quantity;
                released.push((item, loc, l.quantity));
            }
        }
        released
    }

    fn order_mut(&mut self, id: u64) -> Result<&mut Order, String> {
        self.orders
            .get_mut(&id)
            .ok_or_else(|| "order not found".to_string())
    }

    /// Stamps `updated_at` and returns `topic` plus `orders/updated` for the order.
    fn order_changed(&mut self, id: u64, topic: Topic) -> Vec<Emitted> {
        if let Some(o) = self.orders.get_mut(&id) {
            o.updated_at = now_rfc3339_seconds();
        }
        let payload = self.order_payload(id);
        vec![
            Emitted {
                topic,
                payload: payload.clone(),
            },
            Emitted {
                topic: Topic::OrdersUpdated,
                payload,
            },
        ]
    }

    /// Fulfils the whole order with tracking; releases its committed stock.
    pub fn fulfil(
        &mut self,
        order_id: u64,
        tracking_number: Option<String>,
        company: Option<String>,
    ) -> Result<(u64, Vec<Emitted>), String> {
        let fid = self.new_id();
        let o = self.order_mut(order_id)?;
        if o.cancelled_at.is_some() {
            return Err("the order is cancelled".into());
        }
        if o.fulfillment_status.as_deref() == Some("fulfilled") {
            return Err("the order is already fulfilled".into());
        }
        o.fulfillments.push(Fulfillment {
            id: fid,
            status: "success".into(),
            tracking_number,
            tracking_company: company,
            created_at: now_rfc3339(),
        });
        o.fulfillment_status = Some("fulfilled".into());
        self.release_committed(order_id);
        Ok((fid, self.order_changed(order_id, Topic::OrdersFulfilled)))
    }

    /// Marks a pending order paid (orders/paid, orders/updated).
    pub fn mark_paid(&mut self, order_id: u64) -> Result<Vec<Emitted>, String> {
        let o = self.order_mut(order_id)?;
        if o.financial_status != "pending" {
            return Err(format!("the order is {}, not pending", o.financial_status));
        }
        o.financial_status = "paid".into();
        Ok(self.order_changed(order_id, Topic::OrdersPaid))
    }

    /// Cancels the order; with `restock`, its committed stock is available again.
    pub fn cancel(
        &mut self,
        order_id: u64,
        reason: &str,
        restock: bool,
    ) -> Result<Vec<Emitted>, String> {
        let o = self.order_mut(order_id)?;
        if o.cancelled_at.is_some() {
            return Err("the order is already cancelled".into());
        }
        if o.fulfillment_status.as_deref() == Some("fulfilled") {
            return Err("a fulfilled order cannot be cancelled".into());
        }
        o.cancelled_at = Some(now_rfc3339());
        o.cancel_reason = Some(reason.to_lowercase());
        if o.financial_status == "paid" {
            o.financial_status = "refunded".into();
        } else {
            o.financial_status = "voided".into();
        }
        let mut out = Vec::new();
        for (item, loc, qty) in self.release_committed(order_id) {
            if restock {
                self.levels.entry((item, loc)).or_default().available += qty;
                out.push(Emitted {
                    topic: Topic::InventoryLevelsUpdate,
                    payload: self.inventory_level_payload(item, loc),
                });
            }
        }
        let mut events = self.order_changed(order_id, Topic::OrdersCancelled);
        events.extend(out);
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gids_round_trip() {
        assert_eq!(
            parse_gid("ProductVariant", &gid("ProductVariant", 42)),
            Some(42)
        );
        assert_eq!(parse_gid("Location", &gid("ProductVariant", 42)), None);
        assert_eq!(parse_gid("Location", "garbage"), None);
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
        let whole = now_rfc3339_seconds();
        assert_eq!(whole.len(), "2026-11-18T11:06:40Z".len(), "{whole}");
        assert!(whole.ends_with('Z') && !whole.contains('.'), "{whole}");
    }

    #[test]
    fn money() {
        assert_eq!(parse_cents("12.5"), 1250);
        assert_eq!(parse_cents("3"), 300);
        assert_eq!(format_cents(1999), "19.99");
    }
}
