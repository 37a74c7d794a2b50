//! Prints what the operator applies for `deploy/examples/streampipeline.yaml` at 4 replicas:
//! `cargo run -p sluice-vpa --bin render-example > deploy/examples/streampipeline-children.yaml`
//! (validated offline by `deploy/check.sh`; a test fails when the committed copy is stale).

fn main() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples/streampipeline.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let sp: sluice_vpa::crd::StreamPipeline =
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    print!("{}", sluice_vpa::manifests::example_yaml(&sp, 4));
}
