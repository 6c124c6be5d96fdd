//! Webhook signatures: base64(HMAC-SHA256(secret, raw body)), the scheme of
//! both Shopify (`X-Shopify-Hmac-Sha256`) and WooCommerce
//! (`X-WC-Webhook-Signature`). Checked over the raw bytes, before parsing, in
//! constant time, against every configured secret (rotation).

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Whether `signature_b64` signs `body` under one of `secrets`.
pub fn verify(secrets: &[String], body: &[u8], signature_b64: &str) -> bool {
    let Ok(expected) = base64::engine::general_purpose::STANDARD.decode(signature_b64.trim())
    else {
        return false;
    };
    // Check every secret, so timing does not reveal which one matched.
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(false, |ok, secret| {
            let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()) else {
                return ok;
            };
            mac.update(body);
            mac.verify_slice(&expected).is_ok() | ok
        })
}

/// The signature a sender computes (for tests and tools).
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_any_current_secret_and_rejects_the_rest() {
        let body = br#"{"id":1}"#;
        let sig = sign("new", body);
        assert!(verify(&["old".into(), "new".into()], body, &sig));
        assert!(!verify(&["old".into()], body, &sig));
        assert!(
            !verify(&["new".into()], br#"{"id":2}"#, &sig),
            "tampered body"
        );
        assert!(!verify(&["new".into()], body, "not base64!"));
        assert!(!verify(&["new".into()], body, ""));
        assert!(
            !verify(&["".into()], body, &sign("", body)),
            "an empty secret never verifies"
        );
    }
}
