//! Webhook payloads → canonical shop events (`shop.orders.v1`,
//! `shop.inventory.v1`). Pure functions over JSON: a missing required field is
//! a [`MappingError`] naming it (the gateway answers 400).

use serde::{Deserialize, Serialize};

use super::pruned_json::{JsonRead, Shape};
use crate::config::Platform;

pub use crate::bus::topics::{SHOP_CATALOG, SHOP_INVENTORY, SHOP_ORDERS, SHOP_WEBHOOKS_RAW};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MappingError {
    #[error("missing or invalid field `{0}`")]
    Field(&'static str),
}

/// What the gateway knows about one delivery besides its body.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub platform: Platform,
    pub channel: String,
    pub topic: String,
    pub webhook_id: String,
    /// RFC 3339 event time (`X-Shopify-Triggered-At`), or the arrival time.
    pub event_time: String,
}

/// What a topic becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Order,
    Inventory,
    /// A product created, changed or deleted (`shop.catalog.v1`).
    Catalog,
    /// Kept in the raw topic only (no canonical event yet).
    RawOnly,
}

pub fn kind_of(platform: Platform, topic: &str) -> Option<Kind> {
    match (platform, topic) {
        (
            Platform::Shopify,
            "orders/create" | "orders/updated" | "orders/paid" | "orders/cancelled"
            | "orders/fulfilled",
        ) => Some(Kind::Order),
        (Platform::Shopify, "inventory_levels/update") => Some(Kind::Inventory),
        (Platform::Shopify, "products/create" | "products/update" | "products/delete") => {
            Some(Kind::Catalog)
        }
        (Platform::Woocommerce, "order.created" | "order.updated") => Some(Kind::Order),
        (Platform::Woocommerce, "product.updated") => Some(Kind::RawOnly),
        _ => None,
    }
}

/// The parts of a webhook body the mapping of `kind` reads (the gateway
/// parses nothing else; see [`pruned_json`](super::pruned_json)). A field
/// read below must be named here too: the tests map every real sample both
/// ways and compare.
pub fn body_shape(platform: Platform, kind: Kind) -> &'static Shape {
    match (platform, kind) {
        (Platform::Shopify, Kind::Order) => &SHOPIFY_ORDER,
        (Platform::Woocommerce, Kind::Order) => &WOOCOMMERCE_ORDER,
        (_, Kind::Inventory) => &SHOPIFY_INVENTORY,
        (_, Kind::Catalog) => &SHOPIFY_PRODUCT,
        (_, Kind::RawOnly) => &Shape::Any,
    }
}

const ADDRESS: &[(&str, Shape)] = &[
    ("first_name", Shape::Any),
    ("last_name", Shape::Any),
    ("address1", Shape::Any),
    ("address_1", Shape::Any),
    ("address2", Shape::Any),
    ("address_2", Shape::Any),
    ("city", Shape::Any),
    ("zip", Shape::Any),
    ("postcode", Shape::Any),
    ("country_code", Shape::Any),
    ("country", Shape::Any),
    ("phone", Shape::Any),
    // WooCommerce's billing address carries the customer's email.
    ("email", Shape::Any),
];

const LINE: &[(&str, Shape)] = &[
    ("id", Shape::Any),
    ("sku", Shape::Any),
    ("title", Shape::Any),
    ("name", Shape::Any),
    ("quantity", Shape::Any),
    ("price", Shape::Any),
    ("subtotal", Shape::Any),
];

const SHOPIFY_ORDER: Shape = Shape::Object(&[
    ("id", Shape::Any),
    ("name", Shape::Any),
    ("email", Shape::Any),
    ("contact_email", Shape::Any),
    ("currency", Shape::Any),
    ("total_price", Shape::Any),
    ("financial_status", Shape::Any),
    ("fulfillment_status", Shape::Any),
    ("cancelled_at", Shape::Any),
    ("cancel_reason", Shape::Any),
    ("created_at", Shape::Any),
    ("updated_at", Shape::Any),
    (
        "customer",
        Shape::Object(&[
            ("id", Shape::Any),
            ("email", Shape::Any),
            ("first_name", Shape::Any),
            ("last_name", Shape::Any),
        ]),
    ),
    ("shipping_address", Shape::Object(ADDRESS)),
    ("billing_address", Shape::Object(ADDRESS)),
    ("line_items", Shape::Object(LINE)),
    (
        "fulfillments",
        Shape::Object(&[
            ("status", Shape::Any),
            ("tracking_number", Shape::Any),
            ("tracking_company", Shape::Any),
        ]),
    ),
]);

const WOOCOMMERCE_ORDER: Shape = Shape::Object(&[
    ("id", Shape::Any),
    ("number", Shape::Any),
    ("status", Shape::Any),
    ("currency", Shape::Any),
    ("total", Shape::Any),
    ("customer_id", Shape::Any),
    ("date_created_gmt", Shape::Any),
    ("date_modified_gmt", Shape::Any),
    ("date_modified", Shape::Any),
    ("billing", Shape::Object(ADDRESS)),
    ("shipping", Shape::Object(ADDRESS)),
    ("line_items", Shape::Object(LINE)),
]);

const SHOPIFY_INVENTORY: Shape = Shape::Object(&[
    ("inventory_item_id", Shape::Any),
    ("location_id", Shape::Any),
    ("updated_at", Shape::Any),
    ("available", Shape::Any),
]);

const SHOPIFY_PRODUCT: Shape = Shape::Object(&[
    ("id", Shape::Any),
    ("updated_at", Shape::Any),
    (
        "variants",
        Shape::Object(&[
            ("id", Shape::Any),
            ("sku", Shape::Any),
            ("inventory_item_id", Shape::Any),
        ]),
    ),
]);

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    pub id: Option<String>,
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Address {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub address1: Option<String>,
    pub address2: Option<String>,
    pub city: Option<String>,
    pub zip: Option<String>,
    pub country_code: Option<String>,
    pub phone: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Line {
    pub line_id: String,
    pub sku: Option<String>,
    pub title: Option<String>,
    pub quantity: i64,
    pub price: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Shipment {
    pub status: Option<String>,
    pub tracking_number: Option<String>,
    pub tracking_company: Option<String>,
}

/// `shop.orders.v1` (field order and names mirror the Avro schema).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShopOrderEvent {
    pub key: String,
    pub version: i64,
    pub version_tiebreak: String,
    pub source_ts: i64,
    pub event_id: String,
    pub topic: String,
    pub platform: String,
    pub channel: String,
    pub order_id: String,
    pub order_name: Option<String>,
    pub email: Option<String>,
    pub currency: Option<String>,
    pub total_price: Option<String>,
    pub financial_status: Option<String>,
    pub fulfillment_status: Option<String>,
    pub cancelled_at: Option<String>,
    pub cancel_reason: Option<String>,
    pub created_at: Option<String>,
    pub updated_at: String,
    pub customer: Option<Customer>,
    pub shipping_address: Option<Address>,
    pub billing_address: Option<Address>,
    pub lines: Vec<Line>,
    pub fulfillments: Vec<Shipment>,
}

/// `shop.inventory.v1`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShopInventoryEvent {
    pub key: String,
    pub version: i64,
    pub version_tiebreak: String,
    pub source_ts: i64,
    pub event_id: String,
    pub platform: String,
    pub channel: String,
    pub inventory_item_id: String,
    pub location_id: String,
    pub available: Option<i64>,
    pub updated_at: String,
}

/// One variant of a [`ShopCatalogEvent`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CatalogVariant {
    pub variant_id: String,
    pub sku: Option<String>,
    pub inventory_item_id: Option<String>,
}

/// `shop.catalog.v1`: a product as it is now, or gone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShopCatalogEvent {
    pub key: String,
    pub version: i64,
    pub version_tiebreak: String,
    pub source_ts: i64,
    pub event_id: String,
    pub platform: String,
    pub channel: String,
    pub product_id: String,
    pub deleted: bool,
    pub variants: Vec<CatalogVariant>,
}

/// A string, or a number rendered as one (Shopify ids are JSON numbers).
fn text<J: JsonRead>(v: &J, field: &str) -> Option<String> {
    let v = v.field(field)?;
    match v.as_str() {
        Some(s) if !s.is_empty() => Some(s.to_owned()),
        Some(_) => None,
        None => v.as_number().map(ToString::to_string),
    }
}

fn required<J: JsonRead>(v: &J, field: &'static str) -> Result<String, MappingError> {
    text(v, field).ok_or(MappingError::Field(field))
}

/// `t` as an event time (RFC 3339 UTC, milliseconds): a delivery's arrival
/// when it carries no `X-Shopify-Triggered-At`, and a poll's read. Event
/// times break ties of one version as text, so every one Flywheel makes has
/// this one format (Shopify's own header is UTC with a fraction too).
pub fn event_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Unix microseconds of an RFC 3339 timestamp; a zone-less one is UTC
/// (WooCommerce's `*_gmt` fields).
pub fn micros(ts: &str) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(ts) {
        return Some(t.timestamp_micros());
    }
    chrono::NaiveDateTime::parse_from_str(ts, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc().timestamp_micros())
}

fn versioned(updated_at: &str, d: &Delivery) -> Result<(i64, String, i64), MappingError> {
    let version = micros(updated_at).ok_or(MappingError::Field("updated_at"))?;
    let source_ts = micros(&d.event_time).unwrap_or(version);
    Ok((
        version,
        format!("{}/{}", d.event_time, d.webhook_id),
        source_ts,
    ))
}

fn address<J: JsonRead>(v: Option<&J>) -> Option<Address> {
    let v = v.filter(|v| v.is_object())?;
    Some(Address {
        first_name: text(v, "first_name"),
        last_name: text(v, "last_name"),
        address1: text(v, "address1").or_else(|| text(v, "address_1")),
        address2: text(v, "address2").or_else(|| text(v, "address_2")),
        city: text(v, "city"),
        zip: text(v, "zip").or_else(|| text(v, "postcode")),
        country_code: text(v, "country_code").or_else(|| text(v, "country")),
        phone: text(v, "phone"),
    })
}

fn lines<J: JsonRead>(
    items: Option<&J>,
    unit_price: impl Fn(&J) -> Option<String>,
) -> Result<Vec<Line>, MappingError> {
    let items = items
        .and_then(J::as_items)
        .ok_or(MappingError::Field("line_items"))?;
    items
        .iter()
        .map(|l| {
            Ok(Line {
                line_id: required(l, "id").map_err(|_| MappingError::Field("line_items[].id"))?,
                sku: text(l, "sku"),
                title: text(l, "title").or_else(|| text(l, "name")),
                quantity: l
                    .field("quantity")
                    .and_then(J::as_i64)
                    .ok_or(MappingError::Field("line_items[].quantity"))?,
                price: unit_price(l).ok_or(MappingError::Field("line_items[].price"))?,
            })
        })
        .collect()
}

/// A Shopify `orders/*` payload.
pub fn shopify_order<J: JsonRead>(body: &J, d: &Delivery) -> Result<ShopOrderEvent, MappingError> {
    let order_id = required(body, "id")?;
    let updated_at = required(body, "updated_at")?;
    let (version, version_tiebreak, source_ts) = versioned(&updated_at, d)?;
    let customer = body
        .field("customer")
        .filter(|c| c.is_object())
        .map(|c| Customer {
            id: text(c, "id"),
            email: text(c, "email"),
            first_name: text(c, "first_name"),
            last_name: text(c, "last_name"),
        });
    let fulfillments = body
        .field("fulfillments")
        .and_then(J::as_items)
        .map(|fs| {
            fs.iter()
                .map(|f| Shipment {
                    status: text(f, "status"),
                    tracking_number: text(f, "tracking_number"),
                    tracking_company: text(f, "tracking_company"),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ShopOrderEvent {
        key: format!("{}/{order_id}", d.channel),
        version,
        version_tiebreak,
        source_ts,
        event_id: d.webhook_id.clone(),
        topic: d.topic.clone(),
        platform: d.platform.as_str().into(),
        channel: d.channel.clone(),
        order_name: text(body, "name"),
        email: text(body, "email").or_else(|| text(body, "contact_email")),
        currency: text(body, "currency"),
        total_price: text(body, "total_price"),
        financial_status: text(body, "financial_status"),
        fulfillment_status: text(body, "fulfillment_status"),
        cancelled_at: text(body, "cancelled_at"),
        cancel_reason: text(body, "cancel_reason"),
        created_at: text(body, "created_at"),
        updated_at,
        customer,
        shipping_address: address(body.field("shipping_address")),
        billing_address: address(body.field("billing_address")),
        lines: lines(body.field("line_items"), |l| text(l, "price"))?,
        fulfillments,
        order_id,
    })
}

/// A WooCommerce `order.created` / `order.updated` payload.
pub fn woocommerce_order<J: JsonRead>(
    body: &J,
    d: &Delivery,
) -> Result<ShopOrderEvent, MappingError> {
    let order_id = required(body, "id")?;
    let updated_at = text(body, "date_modified_gmt")
        .or_else(|| text(body, "date_modified"))
        .ok_or(MappingError::Field("date_modified_gmt"))?;
    let (version, version_tiebreak, source_ts) = versioned(&updated_at, d)?;
    let status = text(body, "status").unwrap_or_default();
    // WooCommerce has one status; Shopify (and the canonical event) two.
    let (financial, fulfillment) = match status.as_str() {
        "processing" => ("paid", None),
        "completed" => ("paid", Some("fulfilled")),
        "refunded" => ("refunded", None),
        "cancelled" | "failed" => ("voided", None),
        _ => ("pending", None),
    };
    let billing = body.field("billing");
    Ok(ShopOrderEvent {
        key: format!("{}/{order_id}", d.channel),
        version,
        version_tiebreak,
        source_ts,
        event_id: d.webhook_id.clone(),
        topic: d.topic.clone(),
        platform: d.platform.as_str().into(),
        channel: d.channel.clone(),
        order_name: text(body, "number"),
        email: billing.and_then(|b| text(b, "email")),
        currency: text(body, "currency"),
        total_price: text(body, "total"),
        financial_status: Some(financial.into()),
        fulfillment_status: fulfillment.map(Into::into),
        cancelled_at: (status == "cancelled").then(|| updated_at.clone()),
        cancel_reason: None,
        created_at: text(body, "date_created_gmt"),
        updated_at: updated_at.clone(),
        customer: billing.map(|b| Customer {
            id: text(body, "customer_id"),
            email: text(b, "email"),
            first_name: text(b, "first_name"),
            last_name: text(b, "last_name"),
        }),
        shipping_address: address(body.field("shipping")),
        billing_address: address(billing),
        lines: lines(body.field("line_items"), |l| {
            text(l, "price").or_else(|| text(l, "subtotal"))
        })?,
        fulfillments: Vec::new(),
        order_id,
    })
}

/// A Shopify `inventory_levels/update` payload.
pub fn shopify_inventory<J: JsonRead>(
    body: &J,
    d: &Delivery,
) -> Result<ShopInventoryEvent, MappingError> {
    let item = required(body, "inventory_item_id")?;
    let location = required(body, "location_id")?;
    let updated_at = required(body, "updated_at")?;
    let (version, version_tiebreak, source_ts) = versioned(&updated_at, d)?;
    Ok(ShopInventoryEvent {
        key: format!("{}/{item}/{location}", d.channel),
        version,
        version_tiebreak,
        source_ts,
        event_id: d.webhook_id.clone(),
        platform: d.platform.as_str().into(),
        channel: d.channel.clone(),
        inventory_item_id: item,
        location_id: location,
        available: body.field("available").and_then(J::as_i64),
        updated_at,
    })
}

/// A Shopify `products/create`, `products/update` or `products/delete`
/// payload. A deletion carries only the product's id; its version is the
/// event time, which is after the product's last update.
pub fn shopify_product<J: JsonRead>(
    body: &J,
    d: &Delivery,
) -> Result<ShopCatalogEvent, MappingError> {
    let product = required(body, "id")?;
    let deleted = d.topic == "products/delete";
    let (version, version_tiebreak, source_ts) = if deleted {
        // A deletion has no `updated_at`: its version is when it was sent,
        // cut to whole seconds like the `updated_at` of a product created in
        // its place. With the fraction, a SKU's new product created in the
        // second its old one was deleted looked older than the deletion and
        // was refused. The tiebreak keeps the fraction.
        let (sent, tiebreak, source_ts) = versioned(&d.event_time, d)?;
        (sent - sent.rem_euclid(1_000_000), tiebreak, source_ts)
    } else {
        versioned(&required(body, "updated_at")?, d)?
    };
    let variants = if deleted {
        Vec::new()
    } else {
        body.field("variants")
            .and_then(J::as_items)
            .ok_or(MappingError::Field("variants"))?
            .iter()
            .map(|v| {
                Ok(CatalogVariant {
                    variant_id: required(v, "id")
                        .map_err(|_| MappingError::Field("variants[].id"))?,
                    sku: text(v, "sku"),
                    inventory_item_id: text(v, "inventory_item_id"),
                })
            })
            .collect::<Result<_, MappingError>>()?
    };
    Ok(ShopCatalogEvent {
        key: format!("{}/product/{product}", d.channel),
        version,
        version_tiebreak,
        source_ts,
        event_id: d.webhook_id.clone(),
        platform: d.platform.as_str().into(),
        channel: d.channel.clone(),
        product_id: product,
        deleted,
        variants,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn delivery(platform: Platform, topic: &str) -> Delivery {
        Delivery {
            platform,
            channel: "demo".into(),
            topic: topic.into(),
            webhook_id: "w-1".into(),
            event_time: "2026-11-23T10:00:01.000Z".into(),
        }
    }

    #[test]
    fn shopify_order_maps_lines_customer_and_version() {
        let body = json!({"id": 820982911946154508u64, "name": "#9999", "email": "jon@example.com",
            "updated_at": "2026-11-23T05:00:00-05:00", "currency": "EUR", "total_price": "199.65",
            "financial_status": "paid", "fulfillment_status": null,
            "customer": {"id": 115310627314723954u64, "email": "jon@example.com", "first_name": "Jon", "last_name": "Doe"},
            "shipping_address": {"address1": "123 Street", "city": "Berlin", "zip": "10115", "country_code": "DE"},
            "line_items": [{"id": 1, "sku": "SKU-000001", "quantity": 2, "price": "99.00", "title": "T"}]});
        let e = shopify_order(&body, &delivery(Platform::Shopify, "orders/paid")).unwrap();
        assert_eq!(e.key, "demo/820982911946154508");
        assert_eq!(e.version, micros("2026-11-23T10:00:00Z").unwrap());
        assert_eq!(e.version_tiebreak, "2026-11-23T10:00:01.000Z/w-1");
        assert_eq!(e.lines[0].sku.as_deref(), Some("SKU-000001"));
        assert_eq!(e.lines[0].quantity, 2);
        assert_eq!(e.customer.unwrap().first_name.as_deref(), Some("Jon"));
        assert_eq!(e.shipping_address.unwrap().city.as_deref(), Some("Berlin"));
        assert_eq!(e.fulfillment_status, None);
    }

    #[test]
    fn missing_fields_are_named() {
        let d = delivery(Platform::Shopify, "orders/create");
        assert_eq!(
            shopify_order(&json!({"id": 1}), &d).unwrap_err(),
            MappingError::Field("updated_at")
        );
        assert_eq!(
            shopify_order(&json!({"id": 1, "updated_at": "yesterday"}), &d).unwrap_err(),
            MappingError::Field("updated_at")
        );
        assert_eq!(
            shopify_order(&json!({"id": 1, "updated_at": "2026-11-23T10:00:00Z"}), &d).unwrap_err(),
            MappingError::Field("line_items")
        );
        assert_eq!(
            shopify_inventory(&json!({"inventory_item_id": 1}), &d).unwrap_err(),
            MappingError::Field("location_id")
        );
    }

    #[test]
    fn shopify_products_map_their_variants_and_deletions() {
        let body = json!({"id": 788032119674292922u64, "updated_at": "2026-11-23T10:00:00Z",
            "variants": [
                {"id": 642667041472713922u64, "sku": "SKU-1", "inventory_item_id": 457924702},
                {"id": 757650484644203962u64, "sku": "", "inventory_item_id": 39072856}]});
        let e = shopify_product(&body, &delivery(Platform::Shopify, "products/update")).unwrap();
        assert_eq!(e.key, "demo/product/788032119674292922");
        assert!(!e.deleted);
        assert_eq!(e.version, micros("2026-11-23T10:00:00Z").unwrap());
        assert_eq!(e.variants[0].variant_id, "642667041472713922");
        assert_eq!(e.variants[0].sku.as_deref(), Some("SKU-1"));
        assert_eq!(
            e.variants[0].inventory_item_id.as_deref(),
            Some("457924702")
        );
        assert_eq!(e.variants[1].sku, None, "an empty SKU is none");
        let gone = shopify_product(
            &json!({"id": 788032119674292922u64}),
            &delivery(Platform::Shopify, "products/delete"),
        )
        .unwrap();
        assert!(gone.deleted && gone.variants.is_empty());
        assert_eq!(gone.version, micros("2026-11-23T10:00:01Z").unwrap());
        // Sent with a fraction: versioned in whole seconds, like the
        // `updated_at` of a product created in the same second.
        let mut sent = delivery(Platform::Shopify, "products/delete");
        sent.event_time = "2026-11-23T10:00:01.734Z".into();
        let gone = shopify_product(&json!({"id": 1}), &sent).unwrap();
        assert_eq!(gone.version, micros("2026-11-23T10:00:01Z").unwrap());
        assert!(
            gone.version_tiebreak
                .starts_with("2026-11-23T10:00:01.734Z/")
        );
        assert_eq!(
            shopify_product(
                &json!({"id": 1, "updated_at": "2026-11-23T10:00:00Z"}),
                &delivery(Platform::Shopify, "products/update")
            )
            .unwrap_err(),
            MappingError::Field("variants")
        );
    }

    #[test]
    fn woocommerce_status_splits_into_financial_and_fulfillment() {
        let body = json!({"id": 727, "number": "727", "status": "completed", "currency": "EUR", "total": "29.35",
            "date_modified_gmt": "2026-11-23T10:00:00",
            "billing": {"first_name": "John", "last_name": "Doe", "email": "john@example.com", "address_1": "969 Market", "postcode": "94103", "country": "US"},
            "line_items": [{"id": 315, "sku": "SKU-000002", "quantity": 2, "price": 9.0, "name": "Woo"}]});
        let e =
            woocommerce_order(&body, &delivery(Platform::Woocommerce, "order.updated")).unwrap();
        assert_eq!(e.financial_status.as_deref(), Some("paid"));
        assert_eq!(e.fulfillment_status.as_deref(), Some("fulfilled"));
        assert_eq!(e.email.as_deref(), Some("john@example.com"));
        assert_eq!(e.lines[0].price, "9.0");
        assert_eq!(e.billing_address.unwrap().zip.as_deref(), Some("94103"));
        assert_eq!(e.version, micros("2026-11-23T10:00:00Z").unwrap());
    }

    #[test]
    fn topics() {
        assert_eq!(
            kind_of(Platform::Shopify, "orders/fulfilled"),
            Some(Kind::Order)
        );
        assert_eq!(
            kind_of(Platform::Shopify, "inventory_levels/update"),
            Some(Kind::Inventory)
        );
        assert_eq!(
            kind_of(Platform::Shopify, "products/delete"),
            Some(Kind::Catalog)
        );
        assert_eq!(kind_of(Platform::Shopify, "carts/create"), None);
        assert_eq!(
            kind_of(Platform::Woocommerce, "order.created"),
            Some(Kind::Order)
        );
        assert_eq!(kind_of(Platform::Woocommerce, "orders/create"), None);
    }
}

#[cfg(test)]
mod avro_tests {
    use super::*;
    use crate::bus::avro::AvroCodec;
    use serde_json::{Value, json};

    /// The order mapping of `platform`, over either JSON tree.
    fn order<J: JsonRead>(
        platform: Platform,
        body: &J,
        d: &Delivery,
    ) -> Result<ShopOrderEvent, MappingError> {
        match platform {
            Platform::Shopify => shopify_order(body, d),
            Platform::Woocommerce => woocommerce_order(body, d),
        }
    }

    /// The real webhook bodies of `../shared/webhook-samples/` (or of
    /// `FLYWHEEL_WEBHOOK_SAMPLES`), with the platform and topic their file
    /// names give. Not the project's own files, so read where they are.
    fn real_samples() -> Vec<(Platform, String, String, Vec<u8>)> {
        let dir = std::env::var_os("FLYWHEEL_WEBHOOK_SAMPLES")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/webhook-samples")
            });
        let mut samples = Vec::new();
        for (platform, sub) in [
            (Platform::Shopify, "shopify"),
            (Platform::Woocommerce, "woocommerce"),
        ] {
            let entries = std::fs::read_dir(dir.join(sub)).unwrap_or_else(|e| {
                panic!(
                    "the real webhook samples are not at {} ({e}); set FLYWHEEL_WEBHOOK_SAMPLES",
                    dir.display()
                )
            });
            for entry in entries {
                let path = entry.unwrap().path();
                let name = path.file_stem().unwrap().to_string_lossy().into_owned();
                // `orders__create__2` → `orders/create`, `order.updated__3` → `order.updated`.
                let (stem, _) = name
                    .rsplit_once("__")
                    .unwrap_or_else(|| panic!("{name}: not `<topic>__<n>`"));
                let topic = stem.replace("__", "/");
                samples.push((platform, topic, name, std::fs::read(&path).unwrap()));
            }
        }
        samples
    }

    /// The project's own fixtures and a product with more than the mapping
    /// reads map the same parsed whole or pruned.
    #[test]
    fn fixtures_and_products_map_the_same_pruned() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        for (file, platform, topic) in [
            (
                "shopify_orders_create.json",
                Platform::Shopify,
                "orders/create",
            ),
            (
                "woocommerce_order_created.json",
                Platform::Woocommerce,
                "order.created",
            ),
        ] {
            let bytes = std::fs::read(fixtures.join(file)).unwrap();
            let d = Delivery {
                platform,
                channel: "demo".into(),
                topic: topic.into(),
                webhook_id: "w".into(),
                event_time: "2026-11-23T10:00:01Z".into(),
            };
            let whole: Value = serde_json::from_slice(&bytes).unwrap();
            let pruned =
                crate::shop::pruned_json::parse(&bytes, body_shape(platform, Kind::Order)).unwrap();
            assert_eq!(
                order(platform, &pruned, &d),
                order(platform, &whole, &d),
                "{file}"
            );
            assert!(order(platform, &whole, &d).is_ok(), "{file}");
        }
        let product = json!({"id": 1, "title": "T", "updated_at": "2026-11-23T10:00:00Z",
            "images": [{"id": 9, "src": "x"}], "options": [{"name": "Size"}],
            "variants": [{"id": 2, "sku": "S", "inventory_item_id": 3, "price": "1.00",
                          "option1": "M", "inventory_quantity": 4}, {"id": 4}]});
        let bytes = serde_json::to_vec(&product).unwrap();
        let pruned =
            crate::shop::pruned_json::parse(&bytes, body_shape(Platform::Shopify, Kind::Catalog))
                .unwrap();
        for topic in ["products/update", "products/delete"] {
            let d = Delivery {
                platform: Platform::Shopify,
                channel: "demo".into(),
                topic: topic.into(),
                webhook_id: "w".into(),
                event_time: "2026-11-23T10:00:01Z".into(),
            };
            assert_eq!(shopify_product(&pruned, &d), shopify_product(&product, &d));
            assert!(shopify_product(&product, &d).is_ok());
        }
    }

    /// What `encode_serde` produced before it serialized straight into
    /// bytes: an Avro `Value`, resolved against the schema.
    fn encoded_through_value<T: serde::Serialize>(codec: &AvroCodec, event: &T) -> Vec<u8> {
        let value = apache_avro::to_value(event)
            .and_then(|v| v.resolve(codec.schema()))
            .unwrap();
        codec.encode(&value).unwrap()
    }

    /// Every real sample maps to its canonical event, the same whether the
    /// body was parsed whole or only where its shape says; the event's bytes
    /// are those of the resolved-`Value` encoding and decode back to it.
    #[test]
    fn real_webhooks_map_and_encode_as_through_a_resolved_value() {
        let samples = real_samples();
        assert_eq!(samples.len(), 15, "the 15 samples of SOURCES.md");
        let mut by_kind = std::collections::HashMap::new();
        for (platform, topic, name, bytes) in samples {
            let whole: Value =
                serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            let d = Delivery {
                platform,
                channel: "demo".into(),
                topic: topic.clone(),
                webhook_id: format!("sample-{name}"),
                event_time: "2026-11-23T10:00:01Z".into(),
            };
            let kind = kind_of(platform, &topic)
                .unwrap_or_else(|| panic!("{name}: topic {topic} is not one we take"));
            *by_kind.entry(format!("{kind:?}")).or_insert(0) += 1;
            let body = crate::shop::pruned_json::parse(&bytes, body_shape(platform, kind))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                serde_json::to_vec(&body.to_value()).unwrap().len() < bytes.len(),
                "{name}: nothing was pruned"
            );
            match kind {
                Kind::Order => {
                    let event =
                        order(platform, &body, &d).unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert_eq!(
                        Ok(&event),
                        order(platform, &whole, &d).as_ref(),
                        "{name}: pruned ≠ whole"
                    );
                    assert!(!event.lines.is_empty(), "{name}: no lines mapped");
                    let codec = AvroCodec::for_topic(SHOP_ORDERS).unwrap();
                    let bytes = codec.encode_serde(&event).unwrap();
                    assert_eq!(bytes, encoded_through_value(codec, &event), "{name}");
                    let back: ShopOrderEvent = codec.decode_serde(&bytes).unwrap();
                    assert_eq!(back, event, "{name}");
                }
                Kind::Inventory => {
                    let event =
                        shopify_inventory(&body, &d).unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert_eq!(
                        Ok(&event),
                        shopify_inventory(&whole, &d).as_ref(),
                        "{name}: pruned ≠ whole"
                    );
                    let codec = AvroCodec::for_topic(SHOP_INVENTORY).unwrap();
                    let bytes = codec.encode_serde(&event).unwrap();
                    assert_eq!(bytes, encoded_through_value(codec, &event), "{name}");
                    let back: ShopInventoryEvent = codec.decode_serde(&bytes).unwrap();
                    assert_eq!(back, event, "{name}");
                }
                Kind::Catalog | Kind::RawOnly => panic!("{name}: no sample of this kind"),
            }
        }
        assert_eq!(by_kind.get("Order"), Some(&13), "{by_kind:?}");
        assert_eq!(by_kind.get("Inventory"), Some(&2), "{by_kind:?}");
    }

    #[test]
    fn canonical_events_round_trip_through_their_schemas() {
        let d = Delivery {
            platform: Platform::Shopify,
            channel: "demo".into(),
            topic: "orders/create".into(),
            webhook_id: "w".into(),
            event_time: "2026-11-23T10:00:01Z".into(),
        };
        let body = json!({"id": 1, "updated_at": "2026-11-23T10:00:00Z",
            "customer": {"email": "a@b.c"}, "shipping_address": {"city": "X"}, "billing_address": {"city": "Y"},
            "fulfillments": [{"status": "success", "tracking_number": "T"}],
            "line_items": [{"id": 1, "sku": "S", "quantity": 1, "price": "1.00"}]});
        let e = shopify_order(&body, &d).unwrap();
        let codec = AvroCodec::for_topic(SHOP_ORDERS).unwrap();
        let bytes = codec.encode_serde(&e).map_err(|e| e.to_string()).unwrap();
        let back: ShopOrderEvent = codec.decode_serde(&bytes).unwrap();
        assert_eq!(back, e);
        let inv = shopify_inventory(
            &json!({"inventory_item_id": 1, "location_id": 2, "available": 3, "updated_at": "2026-11-23T10:00:00Z"}),
            &d,
        )
        .unwrap();
        let codec = AvroCodec::for_topic(SHOP_INVENTORY).unwrap();
        let back: ShopInventoryEvent = codec
            .decode_serde(&codec.encode_serde(&inv).unwrap())
            .unwrap();
        assert_eq!(back, inv);
        let product = shopify_product(
            &json!({"id": 1, "updated_at": "2026-11-23T10:00:00Z",
                    "variants": [{"id": 2, "sku": "S", "inventory_item_id": 3}, {"id": 4}]}),
            &d,
        )
        .unwrap();
        let codec = AvroCodec::for_topic(SHOP_CATALOG).unwrap();
        let bytes = codec.encode_serde(&product).unwrap();
        assert_eq!(bytes, encoded_through_value(codec, &product));
        let back: ShopCatalogEvent = codec.decode_serde(&bytes).unwrap();
        assert_eq!(back, product);
    }
}
