//! Prints what the operator applies for `deploy/examples/streampipeline.yaml` at 4 replicas:
//! `cargo run -p sluice-vpa --bin render-example > deploy/examples/streampipeline-children.yaml`
//! (validated offline by `deploy/check.sh`; a test fails when the committed copy is stale).

fn main() {
    let sp = sluice_vpa::repo::example().unwrap_or_else(|e| panic!("{e}"));
    print!("{}", sluice_vpa::manifests::example_yaml(&sp, 4));
}
