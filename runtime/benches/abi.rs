//! The cost of the plugin boundary: the same no-op pipeline (passthrough: one emitted record per
//! event) called through the same host code, once dlopen'd from `libpassthrough.so` and once
//! linked statically into this binary. Rounds alternate between the two so both see the same
//! machine state; the report gives the median events/s of each and their ratio.
//!
//! Run: `make bench` (or `cargo build --release -p passthrough && cargo bench -p sluice-runtime --bench abi`).

#![allow(unsafe_code)] // One call: turning the statically linked entry point into a checked descriptor.

use std::hint::black_box;
use std::time::{Duration, Instant};

use sluice_plugin_api::abi::{Event, Header, OpenContext, Record};
use sluice_plugin_api::host::{Collector, EventErrorKind, Instance, PluginRef, Refusal};
use sluice_runtime::plugin::Plugin;

/// Counts what it receives, touching every byte length so nothing is optimized away.
#[derive(Default)]
struct Counting {
    records: u64,
    bytes: u64,
}

impl Collector for Counting {
    fn emit(&mut self, output: &str, record: &Record<'_>) -> Result<(), Refusal> {
        if output != "out" {
            return Err(Refusal::UnknownOutput);
        }
        self.records += 1;
        self.bytes += record.value_bytes().map_or(0, <[u8]>::len) as u64
            + record.key_bytes().map_or(0, <[u8]>::len) as u64;
        Ok(())
    }
    fn event_error(&mut self, _index: usize, _kind: EventErrorKind, _message: &str) {}
    fn log(&mut self, _level: u32, _message: &str) {}
}

const EVENTS: usize = 1 << 20;
const ROUNDS: usize = 9;

fn run(instance: &mut Instance, events: &[Event<'_>], batch: usize) -> Duration {
    let mut sink = Counting::default();
    let start = Instant::now();
    for chunk in events.chunks(batch) {
        instance
            .process(black_box(chunk), &mut sink)
            .expect("process");
    }
    let elapsed = start.elapsed();
    assert_eq!(sink.records, events.len() as u64);
    black_box(sink.bytes);
    elapsed
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/release/libpassthrough.so");
    let dynamic = Plugin::load(&path, None)
        .unwrap_or_else(|e| panic!("{e}\n(run `make bench`, which builds it first)"));
    // SAFETY: the statically linked crate's own descriptor, a static of this binary.
    let linked =
        unsafe { PluginRef::new(passthrough::sluice_plugin_entry()) }.expect("static descriptor");

    let payloads: Vec<Vec<u8>> = (0..EVENTS)
        .map(|i| {
            format!(
                "{{\"booking_id\":\"b-{i:08}\",\"city\":\"SG\",\"fare\":12.5,\"distance_km\":4.2}}"
            )
            .into_bytes()
        })
        .collect();
    let keys: Vec<Vec<u8>> = (0..EVENTS)
        .map(|i| format!("b-{i:08}").into_bytes())
        .collect();
    let headers = [Header::new("source", b"bench")];
    let events: Vec<Event<'_>> = (0..EVENTS)
        .map(|i| {
            Event::new("bookings", 0, i as i64)
                .with_key(&keys[i])
                .with_payload(&payloads[i])
                .with_headers(&headers)
        })
        .collect();
    let payload_bytes: usize =
        payloads.iter().map(Vec::len).sum::<usize>() + keys.iter().map(Vec::len).sum::<usize>();

    let ctx = OpenContext::new("bench", 0, 1);
    let mut dyn_instance = dynamic
        .plugin_ref()
        .open("{}", &ctx, &mut Counting::default())
        .expect("open dynamic");
    let mut static_instance = linked
        .open("{}", &ctx, &mut Counting::default())
        .expect("open static");

    println!(
        "sluice ABI benchmark: passthrough plugin, {EVENTS} events ({} bytes of key+payload), {ROUNDS} alternating rounds",
        payload_bytes
    );
    println!(
        "{:>6} {:>16} {:>16} {:>18}",
        "batch", "static ev/s", "dlopen ev/s", "dlopen / static"
    );
    for batch in [1, 16, 256, 4096] {
        run(&mut static_instance, &events, batch); // warm-up
        run(&mut dyn_instance, &events, batch);
        let (mut st, mut dy) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            st.push(EVENTS as f64 / run(&mut static_instance, &events, batch).as_secs_f64());
            dy.push(EVENTS as f64 / run(&mut dyn_instance, &events, batch).as_secs_f64());
        }
        let (st, dy) = (median(st), median(dy));
        println!("{batch:>6} {st:>16.0} {dy:>16.0} {:>17.3}x", dy / st);
    }
}
