//! The consumer: created from the spec with the offset discipline Sluice needs (no auto offset
//! store, commits only of complete units), subscribed by the Kafka loop.

use std::sync::{Arc, Mutex};

use rdkafka::TopicPartitionList;
use rdkafka::consumer::BaseConsumer;

use super::config::client_config;
use super::dispatch::Dispatch;
use super::rebalance::{RebalanceContext, StartPlan};
use crate::config::{KafkaSourceSpec, PipelineSpec, StartFrom};
use crate::offsets::TopicPartition;
use crate::run::RunError;
use crate::telemetry::Telemetry;

pub(crate) fn create_consumer(
    spec: &PipelineSpec,
    source: &KafkaSourceSpec,
    dispatch: Arc<Mutex<Dispatch>>,
    telemetry: Arc<Telemetry>,
    stats_interval: Option<&str>,
) -> Result<BaseConsumer<RebalanceContext>, RunError> {
    let mut config = client_config(
        &source.bootstrap_servers,
        &source.properties,
        &source.properties_from_env,
        "source.kafka",
    )?;
    config
        .set("group.id", &source.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("client.id", format!("sluice-{}", spec.name));
    // Partitions without a committed offset: `start-from` earliest or latest (a time or explicit
    // offsets are set on the assignment; partitions they do not name start at the earliest).
    let reset = match source.start_from {
        StartFrom::Latest => "latest",
        _ => "earliest",
    };
    // The classic protocol's assignor: cooperative-sticky (incremental rebalances). With the
    // KIP-848 protocol (`group.protocol: consumer`) the broker assigns, always incrementally.
    let classic = source.properties.get("group.protocol").map(String::as_str) != Some("consumer");
    for (key, default) in [
        (
            "partition.assignment.strategy",
            classic.then_some("cooperative-sticky"),
        ),
        ("auto.offset.reset", Some(reset)),
        ("statistics.interval.ms", stats_interval),
    ] {
        if let (false, Some(default)) = (source.properties.contains_key(key), default) {
            config.set(key, default);
        }
    }
    config
        .create_with_context(RebalanceContext {
            dispatch,
            telemetry,
            start: StartPlan {
                from: source.start_from.clone(),
                reset: source.reset,
                placed: Mutex::default(),
                state: spec.state.is_some(),
            },
            fresh: Mutex::default(),
            brokers: Mutex::default(),
        })
        .map_err(|e| RunError::Setup(format!("source.kafka: cannot create the consumer: {e}")))
}

pub(crate) fn tpl_of(tp: &TopicPartition) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&tp.topic, tp.partition);
    tpl
}
