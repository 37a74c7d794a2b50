//! Prints the `StreamPipeline` CRD generated from the Rust types:
//! `cargo run -p sluice-vpa --bin crdgen > deploy/crd/streampipelines.sluice.dev.yaml`.

fn main() {
    print!("{}", sluice_vpa::crd::crd_yaml());
}
