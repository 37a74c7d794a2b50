//! The pipeline spec parser, `${VAR}` / `${VAR:-default}` interpolation included: any text must
//! parse or be refused with an error, never panic. Variables of even-length names are set.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_spec::PipelineSpec;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let env = |name: &str| (name.len() % 2 == 0).then(|| format!("v{}", name.len()));
    if let Err(err) = PipelineSpec::parse(&text, std::path::Path::new("/fuzz/pipeline.yaml"), env) {
        // Every refusal renders as one message.
        let _ = err.to_string();
    }
});
