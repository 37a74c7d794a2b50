//! The file source (JSON lines and raw lines) on any input: lines become events, undecodable
//! lines or blank ones, with offsets in order, never a panic. The first byte picks the spec.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_runtime::config::{FileSourceSpec, LineFormat};
use sluice_runtime::source::file::reader::{Batch, FileSource};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, input)) = data.split_first() else {
        return;
    };
    let spec = FileSourceSpec {
        path: "fuzz.jsonl".into(),
        format: if pick & 1 == 0 {
            LineFormat::JsonLines
        } else {
            LineFormat::Lines
        },
        topic: None,
        key_field: (pick & 2 != 0).then(|| "id".to_owned()),
        timestamp_field: (pick & 4 != 0).then(|| "ts".to_owned()),
        batch_size: 1 + usize::from(pick >> 4),
    };
    let reader = Box::new(std::io::Cursor::new(input.to_vec()));
    let mut source = FileSource::from_reader(&spec, std::path::Path::new("fuzz.jsonl"), reader);
    let mut batch = Batch::default();
    let mut last = -1;
    loop {
        source
            .next_batch(&mut batch)
            .expect("reading memory cannot fail");
        if batch.is_empty() {
            break;
        }
        for event in &batch.events {
            assert!(event.offset > last, "offsets only grow");
            last = event.offset;
            let _ = batch.payload(event);
        }
    }
});
