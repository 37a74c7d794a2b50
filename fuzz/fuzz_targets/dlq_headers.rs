//! `sluice dlq replay`'s reading of a dead letter's headers (`sluice.class`, `sluice.time`,
//! `sluice.source.offset`, ...) against its filters: any header set, any values, never a panic.
//! Input: filter bytes, then `key\0value\n` pairs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use sluice_runtime::dlq::ReplayOptions;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (filters, rest) = data.split_at(4);
    let options = ReplayOptions {
        classes: if filters[0] & 1 == 1 {
            vec!["plugin-panic".into()]
        } else {
            Vec::new()
        },
        since_ms: (filters[0] & 2 != 0).then(|| u64::from(filters[1]) * 1000),
        until_ms: (filters[0] & 4 != 0).then(|| u64::from(filters[2]) * 1_000_000),
        from_offset: (filters[0] & 8 != 0).then(|| i64::from(filters[3]) - 100),
        to_offset: (filters[0] & 16 != 0).then(|| i64::from(filters[3])),
        ..ReplayOptions::default()
    };
    let keys = [
        "sluice.class",
        "sluice.time",
        "sluice.source.offset",
        "sluice.source.topic",
    ];
    let mut headers = OwnedHeaders::new();
    for (i, pair) in rest.split(|b| *b == b'\n').enumerate() {
        let (key, value) = match pair.iter().position(|b| *b == 0) {
            Some(at) => (&pair[..at], Some(&pair[at + 1..])),
            None => (pair, None),
        };
        let key = match key.first() {
            Some(k) if (*k as usize) < keys.len() => keys[*k as usize].to_owned(),
            _ => String::from_utf8_lossy(key).into_owned(),
        };
        headers = headers.insert(Header { key: &key, value });
        if i > 64 {
            break;
        }
    }
    let _ = headers.count();
    let _ = options.selects(Some(&headers));
    let _ = options.selects::<OwnedHeaders>(None);
});
