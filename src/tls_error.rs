//! Whether a connection failed because of TLS (an untrusted or wrong
//! certificate, a protocol mismatch): retrying cannot help, so roles stop with
//! the reason instead of restarting forever.

/// The rustls error behind `e`, if any. rustls errors reach us inside nested
/// `std::io::Error`s, whose `source()` skips the wrapped error, so those are
/// opened with `get_ref`.
pub fn rustls_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(tls) = c.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        cause = match c.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as _),
            None => c.source(),
        };
    }
    None
}
