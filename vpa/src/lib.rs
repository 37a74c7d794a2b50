//! The StreamPipeline operator: one custom resource that runs a pipeline with a fixed,
//! partition-aligned replica count and lets the Vertical Pod Autoscaler size its pods, stepping
//! replicas only when the VPA's recommendation presses against the largest allowed pod.
//!
//! - `crd`: the `StreamPipeline` custom resource (`crdgen` prints its CRD);
//! - `policy`: the capacity policy, pure code, decisions in and out;
//! - `manifests`: the children of a pipeline as plain objects (`sluice render` prints them);
//! - `simulate`: `sluice capacity simulate`, the policy against HPA and fixed pods + VPA;
//!
//! No Kubernetes client: the operator that applies these (`sluice-vpa-operator`, in
//! `vpa/operator/`) and the `sluice` command (`sluice render`, `sluice capacity`) both build on
//! this crate, and neither pulls the other's dependencies in.

pub mod crd;
pub mod manifests;
pub mod policy;
pub mod simulate;
pub mod upgrade;

/// Paths in the repository, and its example StreamPipeline (tests and `render-example`).
pub mod repo {
    use std::path::PathBuf;

    /// `path` relative to the repository root.
    pub fn path(path: &str) -> PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(path)
    }

    /// `deploy/examples/streampipeline.yaml`, parsed.
    pub fn example() -> Result<crate::crd::StreamPipeline, String> {
        let file = path("deploy/examples/streampipeline.yaml");
        let text =
            std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))
    }
}
