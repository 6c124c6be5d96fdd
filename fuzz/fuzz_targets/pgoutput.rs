//! pgoutput messages are bytes from outside the process: whatever arrives,
//! `decode` returns a message or an error, never panics, and a message it
//! returns decodes the same way twice.
//!
//! The decoder is pure (bytes in, message out), so it is compiled here from
//! its source files rather than through the flywheel crate: the fuzz build
//! then takes seconds instead of librdkafka, OpenSSL and the broker.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/erp/postgres/lsn.rs"]
#[allow(dead_code)]
mod lsn;
#[path = "../../src/erp/postgres/pgoutput.rs"]
#[allow(dead_code)]
mod pgoutput;

fuzz_target!(|data: &[u8]| {
    let buf = bytes::Bytes::copy_from_slice(data);
    let first = pgoutput::decode(&buf);
    if let Ok(message) = &first {
        assert_eq!(pgoutput::decode(&buf).as_ref(), Ok(message));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = text.parse::<lsn::Lsn>();
    }
});
