//! The StreamPipeline operator: one custom resource that runs a pipeline with a fixed,
//! partition-aligned replica count and lets the Vertical Pod Autoscaler size its pods, stepping
//! replicas only when the VPA's recommendation presses against the largest allowed pod.
//!
//! So far this crate holds the capacity policy (`policy`): pure code, decisions in and out, no
//! Kubernetes client. The controller, the custom resource and `crdgen` build on it.

pub mod crd;
pub mod manifests;
pub mod policy;
