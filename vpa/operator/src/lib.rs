//! The StreamPipeline operator's Kubernetes side, over the `sluice-vpa` crate (the resource, its
//! children, the policy):
//! - `controller`: the reconciler that applies a pipeline's children and writes its status;
//! - `lease`: leader election, so one replica of the `sluice-vpa` binary reconciles at a time.

pub mod controller;
pub mod lease;
#[cfg(test)]
mod mock_api;
