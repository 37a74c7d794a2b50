//! The Sluice runtime: loads a pipeline plugin, feeds it events from a source, routes what it
//! emits to outputs, and applies the pipeline's error policy. The data path only: the `sluice`
//! command lives in `cli/` (crate `sluice-cli`), and nothing here links a Kubernetes or plotting
//! crate (`scripts/check-deps.sh`, run by `make test`, keeps it so).

pub mod admin;
pub mod condition;
pub mod config;
pub mod cpu;
pub mod dead_letter;
pub(crate) mod dispatch;
pub mod dlq;
pub mod error;
pub mod error_policy;
pub mod fatal;
pub mod kafka_access;
pub mod kafka_acls;
pub mod kafka_client;
pub mod message;
pub mod metrics;
pub mod offsets;
pub mod pipeline;
pub mod plugin;
pub(crate) mod pool;
pub mod run;
pub mod schema;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod state;
pub mod status;
pub(crate) mod sync;
pub mod telemetry;
pub mod upgrade;
pub mod worker;
