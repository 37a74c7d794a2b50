//! Values in the Confluent wire format, as a `source.kafka.format` source decodes them before
//! the plugin, and JSON records as an output's `format` encodes them: any bytes, never a panic
//! (a bad value is an `invalid-input` dead letter, a record that does not fit a `sink-rejection`
//! one). Input: a first byte picking the part (the wire header, Avro, Protobuf, JSON Schema; a
//! decode or an encode), then the value. The schemas are the test fixtures' (unions, defaults,
//! a nested message).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use sluice_runtime::schema::avro::Avro;
use sluice_runtime::schema::json::Json;
use sluice_runtime::schema::{protobuf, split};

const AVRO: &str = include_str!("../../tests/fixtures/schemas/booking-v2.avsc");
const PROTO: &str = include_str!("../../tests/fixtures/schemas/booking.proto");
const JSON: &str = include_str!("../../tests/fixtures/schemas/booking.schema.json");

static SCHEMAS: LazyLock<(Avro, protobuf::Protobuf, Json)> = LazyLock::new(|| {
    (
        Avro::parse(AVRO, &[]).unwrap(),
        protobuf::Protobuf::parse(PROTO, &[]).unwrap(),
        Json::parse(JSON).unwrap(),
    )
});

fuzz_target!(|data: &[u8]| {
    let Some((which, value)) = data.split_first() else {
        return;
    };
    let (avro, proto, json) = &*SCHEMAS;
    match which % 7 {
        0 => {
            let _ = split(value);
        }
        1 => {
            let _ = avro.decode(value);
        }
        2 => {
            let mut rest = value;
            if let Ok(indexes) = protobuf::read_indexes(&mut rest) {
                if let Ok(message) = proto.message_at(&indexes) {
                    let _ = protobuf::decode(&message, rest);
                }
            }
        }
        3 => {
            let _ = json.validate(value);
        }
        4 => {
            let _ = avro.encode(value, &mut Vec::new());
        }
        5 => {
            let (message, _) = proto.message(None).unwrap();
            let _ = protobuf::encode(&message, value, &mut Vec::new());
        }
        _ => {
            // What decodes must encode back to the same datum.
            if let Ok(decoded) = avro.decode(value) {
                let mut again = Vec::new();
                avro.encode(&decoded, &mut again)
                    .expect("a decoded datum encodes");
                assert_eq!(avro.decode(&again).unwrap(), decoded);
            }
        }
    }
});
