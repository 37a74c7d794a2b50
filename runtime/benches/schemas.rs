//! What a schema-registry format costs per event, against raw JSON: the same enriched booking
//! (10 fields) decoded by a source (`source.kafka.format`) and encoded by an output (`format:`
//! on a Kafka output), in Avro, Protobuf and JSON Schema, each through the runtime's own
//! `Decoder` and `Encoder` with schemas registered in a real registry (Apicurio, started here).
//! The unit is a raw JSON value's cost in the same place: parsing it into a `serde_json::Value`
//! and writing it back, what a file source's `json-lines` check and a plugin's first step are.
//! Rounds alternate between the formats; the report gives the median ns per event of each and
//! its ratio to raw JSON, and the bytes per event on the wire.
//!
//! Run: `make bench` (or `cargo bench -p sluice-runtime --bench schemas`; needs `make deps`).

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use sluice_runtime::config::{
    KafkaOutputSpec, SchemaRegistrySpec, SubjectNameStrategy, ValueFormat,
};
use sluice_runtime::schema::registry::Registry;
use sluice_runtime::schema::{Decoded, Decoder, Encoder, Schemas};

const EVENTS: usize = 100_000;
const ROUNDS: usize = 7;

fn record(i: usize) -> Vec<u8> {
    let band = ["low", "mid", "high"][i % 3];
    format!(
        r#"{{"booking_id":"b-{i}","city":"SG","status":"completed","fare":{}.5,"distance_km":{}.25,"pickup_ts":{},"pickup_hour_utc":{},"fare_per_km":1.75,"fare_band":"{band}","long_trip":{}}}"#,
        10 + i % 50,
        1 + i % 30,
        1_763_798_400_000u64 + i as u64 * 1000,
        i % 24,
        i % 2 == 0
    )
    .into_bytes()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let registry = sluice_tests::registry::Registry::start();
    let spec = SchemaRegistrySpec {
        url: registry.url.clone(),
        username: None,
        password: None,
        bearer_token: None,
        ca_file: None,
        timeout_ms: 5_000,
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/schemas");
    let schemas = Arc::new(Schemas::new(Registry::new(&spec, &dir).unwrap()));
    let records: Vec<Vec<u8>> = (0..EVENTS).map(record).collect();
    let json_bytes = records.iter().map(Vec::len).sum::<usize>() as f64 / EVENTS as f64;

    struct Format {
        name: &'static str,
        encoder: Encoder,
        decoder: Decoder,
        wire: Vec<Vec<u8>>,
        decode_ns: Vec<f64>,
        encode_ns: Vec<f64>,
    }
    let mut formats: Vec<Format> = [
        (ValueFormat::Avro, "booking.avsc"),
        (ValueFormat::Protobuf, "booking.proto"),
        (ValueFormat::JsonSchema, "booking.schema.json"),
    ]
    .into_iter()
    .map(|(format, file)| {
        let output = KafkaOutputSpec {
            topic: format!("bench-{}", format.name()),
            format,
            subject: None,
            subject_name_strategy: SubjectNameStrategy::TopicName,
            schema: Some(file.into()),
            message: None,
            auto_register: true,
        };
        let encoder = Encoder::new("out", &output, &dir, &schemas).unwrap();
        let wire: Vec<Vec<u8>> = records.iter().map(|r| encoder.encode(r).unwrap()).collect();
        let decoder = Decoder::new(format, schemas.clone());
        decoder.decode(&wire[0]).unwrap(); // the schema, read once into the cache
        Format {
            name: format.name(),
            encoder,
            decoder,
            wire,
            decode_ns: Vec::new(),
            encode_ns: Vec::new(),
        }
    })
    .collect();

    let mut json_ns = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for r in &records {
            let value: serde_json::Value = serde_json::from_slice(black_box(r)).unwrap();
            black_box(serde_json::to_vec(&value).unwrap());
        }
        json_ns.push(started.elapsed().as_nanos() as f64 / EVENTS as f64);
        for f in &mut formats {
            let started = Instant::now();
            for w in &f.wire {
                match f.decoder.decode(black_box(w)).unwrap() {
                    (id, Decoded::Json(json)) => black_box((id, json.len())),
                    (id, Decoded::Tail(from)) => black_box((id, w.len() - from)),
                };
            }
            f.decode_ns
                .push(started.elapsed().as_nanos() as f64 / EVENTS as f64);
            let started = Instant::now();
            for r in &records {
                black_box(f.encoder.encode(black_box(r)).unwrap());
            }
            f.encode_ns
                .push(started.elapsed().as_nanos() as f64 / EVENTS as f64);
        }
    }
    let json = median(json_ns);
    println!(
        "schemas: {EVENTS} enriched bookings (10 fields), median of {ROUNDS} rounds, in-process (no broker)"
    );
    println!(
        "{:<12} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "format", "bytes/ev", "decode ns", "x json", "encode ns", "x json"
    );
    println!(
        "{:<12} {:>10.0} {:>10.0} {:>10.2} {:>10.0} {:>10.2}",
        "raw json", json_bytes, json, 1.0, json, 1.0
    );
    for f in formats {
        let bytes = f.wire.iter().map(Vec::len).sum::<usize>() as f64 / EVENTS as f64;
        let (decode, encode) = (median(f.decode_ns), median(f.encode_ns));
        println!(
            "{:<12} {:>10.0} {:>10.0} {:>10.2} {:>10.0} {:>10.2}",
            f.name,
            bytes,
            decode,
            decode / json,
            encode,
            encode / json
        );
    }
}
