//! librdkafka client configuration from a spec: bootstrap servers, properties, and properties
//! read from the environment (secrets stay out of the spec). One module below every Kafka
//! client of a run: the source's consumer, the producer, the changelog's readers.

use rdkafka::ClientConfig;

use crate::error::RunError;

/// A client configuration: `bootstrap`, then `properties`, then `from_env` (property ->
/// environment variable); `field` names the spec section in errors.
pub(crate) fn config(
    bootstrap: &str,
    properties: &std::collections::BTreeMap<String, String>,
    from_env: &std::collections::BTreeMap<String, String>,
    field: &str,
) -> Result<ClientConfig, RunError> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (k, v) in properties {
        config.set(k, v);
    }
    for (k, var) in from_env {
        let value = std::env::var(var).map_err(|_| {
            RunError::Setup(format!("{field}.properties-from-env.{k}: environment variable `{var}` is not set: export it"))
        })?;
        config.set(k, value);
    }
    Ok(config)
}
