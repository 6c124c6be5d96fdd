//! WooCommerce order status: `completed` with a customer note carrying the
//! carrier and tracking number, or `cancelled`. WooCommerce has no
//! idempotency keys, so the note is written only when the order's notes do not
//! hold it yet, and the status only when it is not already the wanted one: a
//! replay after a crash between the two finishes the job without a second
//! note.

use reqwest::Method;
use serde_json::json;

use super::client::{WooClient, WooError};
use crate::shop::platform::{OrderState, OrderStatusPlatform, Shipped};

/// The customer note of a shipment.
pub fn shipment_note(carrier: Option<&str>, tracking: Option<&str>) -> String {
    match (carrier, tracking) {
        (Some(c), Some(t)) => format!("Shipped with {c}, tracking number {t}."),
        (None, Some(t)) => format!("Shipped, tracking number {t}."),
        (Some(c), None) => format!("Shipped with {c}."),
        (None, None) => "Shipped.".into(),
    }
}

fn refused(e: WooError) -> Result<Result<(), String>, WooError> {
    match e {
        // The shop's answer about this order: a dead letter, not a stop.
        WooError::Refused { status, body, .. } => Ok(Err(format!("HTTP {status}: {body}"))),
        other => Err(other),
    }
}

impl WooClient {
    async fn set_status(
        &self,
        order_id: &str,
        status: &str,
    ) -> Result<Result<(), String>, WooError> {
        match self
            .request(
                Method::PUT,
                &format!("orders/{order_id}"),
                &[],
                Some(&json!({"status": status})),
            )
            .await
        {
            Ok(_) => Ok(Ok(())),
            Err(e) => refused(e),
        }
    }
}

impl OrderStatusPlatform for WooClient {
    type Error = WooError;

    async fn state(&mut self, order_id: &str) -> Result<Option<OrderState>, WooError> {
        let order = match self
            .request(Method::GET, &format!("orders/{order_id}"), &[], None)
            .await
        {
            Ok(o) => o,
            Err(WooError::Refused { status: 404, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(match order["status"].as_str() {
            Some("completed") => OrderState::Fulfilled,
            Some("cancelled" | "refunded" | "failed") => OrderState::Cancelled,
            _ => OrderState::Open,
        }))
    }

    async fn fulfil(
        &mut self,
        order_id: &str,
        carrier: Option<&str>,
        tracking: Option<&str>,
    ) -> Result<Result<(), String>, WooError> {
        let note = shipment_note(carrier, tracking);
        let path = format!("orders/{order_id}/notes");
        let notes = match self.request(Method::GET, &path, &[], None).await {
            Ok(n) => n,
            Err(e) => return refused(e),
        };
        let written = notes
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["note"].as_str() == Some(note.as_str()));
        if !written {
            let body = json!({"note": note, "customer_note": true});
            if let Err(e) = self.request(Method::POST, &path, &[], Some(&body)).await {
                return refused(e);
            }
        }
        self.set_status(order_id, "completed").await
    }

    async fn cancel(&mut self, order_id: &str) -> Result<Result<(), String>, WooError> {
        self.set_status(order_id, "cancelled").await
    }

    /// WooCommerce took the units off the count when it sold them.
    async fn shipped_from(&mut self, _order_id: &str) -> Result<Vec<Shipped>, WooError> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_note_names_carrier_and_tracking() {
        assert_eq!(
            super::shipment_note(Some("DHL"), Some("JJD1")),
            "Shipped with DHL, tracking number JJD1."
        );
        assert_eq!(super::shipment_note(None, None), "Shipped.");
    }
}
