//! `flywheel trace <entity> <key>`: the whole story of one key, for the
//! question "why is SKU X wrong in the shop?" — the ERP's value now, the
//! events Kafka holds for the key, what each shop's processor applied and
//! when, what it last wrote (and whether the shop confirmed it), what
//! the shop shows now, any dead letter, and one verdict per shop. For a
//! shop order (`trace_order`), the other way round: "did order X reach the
//! ERP?" — its events and who fed each, what the order processor applied.

use serde::Serialize;

use super::compare::EntityReport;
use super::{Entity, ReconcileError, TruthRecord, compare_one, decode_all};
use crate::bus::avro::{AvroCodec, field_i64};
use crate::config::{Config, Platform, ShopConfig};
use crate::sync::Lane;
use crate::sync::state::StateDb;

/// One event of the key in its topic.
#[derive(Debug, Serialize)]
pub struct EventSeen {
    pub partition: i32,
    pub offset: i64,
    pub version: i64,
    /// When the change happened at the source (µs since the Unix epoch).
    pub source_ts_micros: i64,
    /// Who produced it, where its headers say: `webhook <id>` (the gateway),
    /// or the order poll or reconciliation that fed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub value: serde_json::Value,
}

/// A dead letter of the key.
#[derive(Debug, Serialize)]
pub struct LetterSeen {
    pub id: String,
    pub stage: String,
    pub error_class: String,
    pub reason: String,
}

/// The key as one shop sees it.
#[derive(Debug, Serialize)]
pub struct ShopStory {
    pub shop: String,
    /// The version this shop's processor applied (absent: never), and when.
    pub applied_version: Option<i64>,
    pub applied_at: Option<String>,
    /// Stock: what the processor last wrote to the shop for this key.
    pub last_write: Option<LastWrite>,
    /// What the ERP says the shop should show, and what it shows.
    pub erp: Option<String>,
    pub shop_now: Option<String>,
    pub in_sync: bool,
    pub verdict: String,
}

/// The stock processor's record of its last write for a key.
#[derive(Debug, Serialize)]
pub struct LastWrite {
    pub quantity: i64,
    /// The ERP version it carried (levels; a count sums several keys).
    pub version: Option<i64>,
    /// Whether the shop accepted it (false: sent, outcome unknown).
    pub confirmed: bool,
}

#[derive(Debug, Serialize)]
pub struct Trace {
    pub entity: String,
    pub key: String,
    /// The ERP's value now, as the source would produce it.
    pub erp_now: Option<serde_json::Value>,
    /// Newest first.
    pub events: Vec<EventSeen>,
    pub dead_letters: Vec<LetterSeen>,
    pub shops: Vec<ShopStory>,
}

/// Tells the story of `key` of `entity` in every configured shop.
pub async fn trace(config: &Config, entity: Entity, key: &str) -> Result<Trace, ReconcileError> {
    let topic = entity.topic();
    // A count per SKU (WooCommerce) sums every warehouse of the SKU.
    let whole_sku = entity == Entity::Stock
        && config
            .shops
            .iter()
            .any(|s| s.platform == Platform::Woocommerce);
    let only = (!whole_sku).then_some(key);
    let truth = crate::erp::source::read_truth(config, &[entity.name()], only).await?;
    let records = truth
        .records
        .get(entity.name())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let decoded = decode_all(entity.name(), records)?;
    let sku = key.split('/').next().unwrap_or(key);
    let own: Vec<TruthRecord> = decoded.iter().filter(|r| r.key == key).cloned().collect();
    let same_sku: Vec<TruthRecord> = decoded
        .iter()
        .filter(|r| r.key.split('/').next() == Some(sku))
        .cloned()
        .collect();
    let erp_now = own
        .first()
        .and_then(|r| serde_json::Value::try_from(r.value.clone()).ok());

    let (mut events, letters) = scan_key(config, topic, key).await?;
    events.sort_by_key(|e| std::cmp::Reverse((e.version, e.offset)));
    let latest = events.first().map(|e| e.version);
    let captured = match (&erp_now, events.first()) {
        (Some(now), Some(newest)) => same_value(now, &newest.value),
        (None, _) => true,
        (Some(_), None) => false,
    };

    let mut state = Some(
        StateDb::connect(config)
            .await
            .map_err(ReconcileError::State)?,
    );
    let mut shops = Vec::new();
    for shop in &config.shops {
        let lane = Lane::for_shop(entity.name(), topic, &shop.name).name();
        let (applied, applied_at, last_write) = match state.as_mut() {
            Some(db) => {
                let applied = db
                    .load_versions(&lane, &[key.to_owned()])
                    .await?
                    .get(key)
                    .map(|v| v.0);
                let at = db.applied_at(&lane, key).await?.and_then(|micros| {
                    chrono::DateTime::from_timestamp_micros(micros).map(|t| t.to_rfc3339())
                });
                let last = match entity {
                    Entity::Stock => last_write(shop, db, key).await?,
                    Entity::Price => None,
                };
                (applied, at, last)
            }
            None => (None, None, None),
        };
        let truth = if entity == Entity::Stock && shop.platform == Platform::Woocommerce {
            &same_sku
        } else {
            &own
        };
        let (report, _) =
            compare_one(config, shop, entity, truth, 1.0, &mut state, &mut None).await?;
        let mut story = story(&shop.name, &report, applied, latest, captured, &letters);
        story.applied_at = applied_at;
        story.last_write = last_write;
        shops.push(story);
    }
    Ok(Trace {
        entity: entity.name().to_owned(),
        key: key.to_owned(),
        erp_now,
        events,
        dead_letters: letters,
        shops,
    })
}

/// Every event of `key` in `topic` (oldest first) and every dead letter of
/// the key.
async fn scan_key(
    config: &Config,
    topic: &'static str,
    key: &str,
) -> Result<(Vec<EventSeen>, Vec<LetterSeen>), ReconcileError> {
    let kafka = config.kafka.clone();
    let wanted = key.to_owned();
    tokio::task::spawn_blocking(move || {
        let codec = AvroCodec::for_topic(topic)?;
        let events = crate::bus::scan::read_topic(&kafka, topic, "trace", |m| {
            use rdkafka::message::{Headers, Message};
            (m.key() == Some(wanted.as_bytes())).then_some(())?;
            let value = codec.decode(m.payload().unwrap_or_default()).ok()?;
            let header = |name: &str| {
                m.headers()?
                    .iter()
                    .find(|h| h.key == name)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            };
            let source = header("flywheel.source")
                .or_else(|| header("flywheel.webhook.id").map(|id| format!("webhook {id}")));
            Some(EventSeen {
                partition: m.partition(),
                offset: m.offset(),
                version: field_i64(&value, "version").unwrap_or_default(),
                source_ts_micros: field_i64(&value, "source_ts").unwrap_or_default(),
                source,
                value: serde_json::Value::try_from(value).unwrap_or_default(),
            })
        })
        .map_err(|e| crate::bus::BusError::Scan(Box::new(e)))?;
        let letters = crate::ops::dlq::read_all(&kafka)
            .map_err(|e| crate::bus::BusError::Scan(Box::new(e)))?
            .into_iter()
            .filter(|p| p.letter.key == wanted)
            .map(|p| LetterSeen {
                id: p.id(),
                stage: p.letter.stage.clone(),
                error_class: p.letter.error_class.clone(),
                reason: p.letter.reason.clone(),
            })
            .collect::<Vec<_>>();
        Ok::<_, crate::bus::BusError>((events, letters))
    })
    .await
    .map_err(|e| ReconcileError::Task(e.to_string()))?
    .map_err(ReconcileError::from)
}

/// One shop order's story, shop → ERP: its events in `shop.orders.v1` and
/// who fed each, what the order processor applied and when, any dead letter,
/// and a verdict.
#[derive(Debug, Serialize)]
pub struct OrderTrace {
    pub key: String,
    /// Newest first.
    pub events: Vec<EventSeen>,
    pub dead_letters: Vec<LetterSeen>,
    /// The version the order processor applied (absent: never), and when:
    /// stored after the ERP transaction committed.
    pub applied_version: Option<i64>,
    pub applied_at: Option<String>,
    pub in_erp: bool,
    pub verdict: String,
}

/// Tells the story of shop order `key` (`<shop>/<order id>`, as in Kafka).
pub async fn trace_order(config: &Config, key: &str) -> Result<OrderTrace, ReconcileError> {
    let (mut events, dead_letters) =
        scan_key(config, crate::shop::mapping::SHOP_ORDERS, key).await?;
    events.sort_by_key(|e| std::cmp::Reverse((e.version, e.offset)));
    let lane = Lane::orders_in().name();
    let mut db = StateDb::connect(config)
        .await
        .map_err(ReconcileError::State)?;
    let applied_version = db
        .load_versions(&lane, &[key.to_owned()])
        .await?
        .get(key)
        .map(|v| v.0);
    let applied_at = db
        .applied_at(&lane, key)
        .await?
        .and_then(|micros| chrono::DateTime::from_timestamp_micros(micros).map(|t| t.to_rfc3339()));
    let latest = events.first().map(|e| e.version);
    let (in_erp, verdict) = order_verdict(applied_version, latest, dead_letters.first());
    Ok(OrderTrace {
        key: key.to_owned(),
        events,
        dead_letters,
        applied_version,
        applied_at,
        in_erp,
        verdict,
    })
}

/// Pure: whether the order is in the ERP as the shop last said, and why not.
fn order_verdict(
    applied: Option<i64>,
    latest: Option<i64>,
    letter: Option<&LetterSeen>,
) -> (bool, String) {
    match (applied, latest, letter) {
        (Some(a), Some(l), _) if a >= l => (true, "in the ERP at its latest version".to_owned()),
        (_, _, Some(l)) => (
            false,
            format!("dead letter {} ({}): {}", l.id, l.error_class, l.reason),
        ),
        (Some(_), None, None) => (
            true,
            "in the ERP; Kafka no longer holds its events (retention)".to_owned(),
        ),
        (None, None, None) => (
            false,
            "not in Kafka: no webhook reached the gateway and no poll found it yet (is the order poll running? `flywheel_order_poll_last_success_timestamp_seconds`)".to_owned(),
        ),
        (applied, Some(l), None) => (
            false,
            format!(
                "not yet applied: the order processor applied {}, Kafka holds version {l}",
                applied.map_or("nothing".to_owned(), |v| format!("version {v}"))
            ),
        ),
    }
}

/// As `flywheel trace order` prints it.
pub fn render_order(t: &OrderTrace) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "order {}", t.key);
    write_events(&mut out, &t.events, &t.dead_letters);
    let _ = writeln!(
        out,
        "ERP:          applied {}{}",
        t.applied_version
            .map_or("nothing".to_owned(), |v| format!("version {v}")),
        t.applied_at
            .as_ref()
            .map_or(String::new(), |at| format!(" at {at}"))
    );
    let _ = writeln!(out, "verdict: {}", t.verdict);
    out
}

fn write_events(out: &mut String, events: &[EventSeen], letters: &[LetterSeen]) {
    use std::fmt::Write;
    for e in events {
        let at = chrono::DateTime::from_timestamp_micros(e.source_ts_micros)
            .map_or("?".into(), |t| t.to_rfc3339());
        let by = e
            .source
            .as_ref()
            .map_or(String::new(), |s| format!(" by {s}"));
        let _ = writeln!(
            out,
            "event:        version {} at {at}{by} (partition {} offset {}): {}",
            e.version, e.partition, e.offset, e.value
        );
    }
    if events.is_empty() {
        let _ = writeln!(out, "event:        none in Kafka");
    }
    for l in letters {
        let _ = writeln!(
            out,
            "dead letter:  {} {} {}: {}",
            l.id, l.stage, l.error_class, l.reason
        );
    }
}

/// The stock processor's last write for `key` (`SKU/warehouse`) to `shop`:
/// the level's on Shopify, the SKU's count on WooCommerce.
async fn last_write(
    shop: &ShopConfig,
    db: &mut StateDb,
    key: &str,
) -> Result<Option<LastWrite>, ReconcileError> {
    let (sku, warehouse) = key.split_once('/').unwrap_or((key, ""));
    Ok(match shop.platform {
        Platform::Shopify => {
            let mut platform = crate::shop::shopify::inventory::ShopifyInventory {
                catalog: super::shopify_catalog(shop, 1.0)?,
            };
            super::stock::last_level_write(&mut platform, db, shop, sku, warehouse)
                .await?
                .map(|w| LastWrite {
                    quantity: w.quantity,
                    version: Some(w.version),
                    confirmed: w.confirmed,
                })
        }
        Platform::Woocommerce => db
            .load_counts(&shop.name, &[sku.to_owned()])
            .await?
            .get(sku)
            .map(|w| LastWrite {
                quantity: w.quantity,
                version: None,
                confirmed: w.confirmed,
            }),
    })
}

/// Whether two events say the same, whatever their versions and times.
fn same_value(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    let strip = |v: &serde_json::Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            for f in ["version", "source_ts", "event_id"] {
                o.remove(f);
            }
        }
        v
    };
    strip(a) == strip(b)
}

/// The verdict for one shop, from its comparison and the key's history.
fn story(
    shop: &str,
    report: &EntityReport,
    applied: Option<i64>,
    latest: Option<i64>,
    captured: bool,
    letters: &[LetterSeen],
) -> ShopStory {
    let drifted = report.drifted.first();
    let mut story = ShopStory {
        shop: shop.to_owned(),
        applied_version: applied,
        applied_at: None,
        last_write: None,
        erp: drifted.map(|d| d.erp.clone()),
        shop_now: drifted.map(|d| d.shop.clone()),
        in_sync: false,
        verdict: String::new(),
    };
    let letter = letters
        .iter()
        .find(|l| l.stage.contains(shop))
        .or(letters.first());
    story.verdict = if report.compared == 0 {
        story.in_sync = true;
        "not this shop's: another price list or currency".to_owned()
    } else if report.is_in_sync() {
        story.in_sync = true;
        "in sync".to_owned()
    } else if let Some(l) = letter {
        format!("dead letter {} ({}): {}", l.id, l.error_class, l.reason)
    } else if !report.missing_in_shop.is_empty() {
        "unknown SKU: the shop has no such product or level".to_owned()
    } else if latest.is_none() {
        "not captured: Kafka holds no event for this key".to_owned()
    } else if !captured {
        "not captured yet: the ERP changed since the newest event in Kafka (is the source running?)"
            .to_owned()
    } else if applied < latest {
        format!(
            "not yet applied: the processor applied {}, Kafka holds version {}",
            applied.map_or("nothing".to_owned(), |v| format!("version {v}")),
            latest.unwrap_or_default()
        )
    } else {
        "the shop changed it: the processor applied the latest version; `flywheel reconcile --repair` writes the ERP's value again".to_owned()
    };
    story
}

/// Newest first, as `flywheel trace` prints it.
pub fn render(t: &Trace) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "{} {}", t.entity, t.key);
    match &t.erp_now {
        Some(v) => {
            let _ = writeln!(out, "ERP now:      {v}");
        }
        None => {
            let _ = writeln!(out, "ERP now:      no such key");
        }
    }
    write_events(&mut out, &t.events, &t.dead_letters);
    for s in &t.shops {
        let _ = writeln!(
            out,
            "shop {}:     applied {}{}{}",
            s.shop,
            s.applied_version
                .map_or("nothing".to_owned(), |v| format!("version {v}")),
            s.applied_at
                .as_ref()
                .map_or(String::new(), |at| format!(" at {at}")),
            match (&s.erp, &s.shop_now) {
                (Some(erp), Some(now)) => format!("; ERP says {erp}, the shop shows {now}"),
                _ => String::new(),
            }
        );
        if let Some(w) = &s.last_write {
            let _ = writeln!(
                out,
                "shop {}:     last wrote {}{}, {}",
                s.shop,
                w.quantity,
                w.version
                    .map_or(String::new(), |v| format!(" (version {v})")),
                if w.confirmed {
                    "confirmed by the shop"
                } else {
                    "not confirmed (sent, outcome unknown)"
                }
            );
        }
        let _ = writeln!(out, "verdict {}: {}", s.shop, s.verdict);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_is_in_the_erp_once_its_latest_version_is_applied() {
        let letter = LetterSeen {
            id: "0:7".into(),
            stage: "processor:order_in".into(),
            error_class: "erp_refused".into(),
            reason: "no such product".into(),
        };
        assert!(order_verdict(Some(5), Some(5), None).0);
        // An older version's letter does not matter once a newer one landed.
        assert!(order_verdict(Some(6), Some(5), Some(&letter)).0);
        let (in_erp, why) = order_verdict(Some(4), Some(5), None);
        assert!(!in_erp);
        assert!(
            why.contains("applied version 4, Kafka holds version 5"),
            "{why}"
        );
        let (in_erp, why) = order_verdict(None, Some(5), Some(&letter));
        assert!(!in_erp && why.starts_with("dead letter 0:7"), "{why}");
        let (in_erp, why) = order_verdict(None, None, None);
        assert!(!in_erp && why.starts_with("not in Kafka"), "{why}");
        assert!(order_verdict(Some(5), None, None).0);
    }

    #[test]
    fn an_order_trace_prints_who_fed_each_event() {
        let t = OrderTrace {
            key: "demo/7".into(),
            events: vec![EventSeen {
                partition: 1,
                offset: 42,
                version: 1_700_000_000_000_000,
                source_ts_micros: 1_700_000_000_000_000,
                source: Some("webhook b54557e4".into()),
                value: serde_json::json!({"order_id": "7"}),
            }],
            dead_letters: Vec::new(),
            applied_version: Some(1_700_000_000_000_000),
            applied_at: Some("2023-11-14T22:13:21+00:00".into()),
            in_erp: true,
            verdict: "in the ERP at its latest version".into(),
        };
        let text = render_order(&t);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "order demo/7");
        assert!(
            lines[1].contains(" by webhook b54557e4 (partition 1 offset 42)"),
            "{text}"
        );
        assert_eq!(
            lines[2],
            "ERP:          applied version 1700000000000000 at 2023-11-14T22:13:21+00:00"
        );
        assert_eq!(lines[3], "verdict: in the ERP at its latest version");
    }
}
