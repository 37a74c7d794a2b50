//! The consumer: created from the spec with the offset discipline Sluice needs (no auto offset
//! store, commits only of complete units), and the dispatcher's source: it pauses, resumes and
//! commits partitions for it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::rebalance::{RebalanceContext, StartPlan};
use crate::config::{KafkaSourceSpec, PipelineSpec, StartFrom};
use crate::dispatch::{Dispatcher, Source};
use crate::error::RunError;
use crate::kafka_client;
use crate::offsets::TopicPartition;
use crate::sink::kafka::KafkaSink;
use crate::telemetry::Telemetry;

/// The Kafka source's consumer.
pub(crate) type KafkaConsumer = BaseConsumer<RebalanceContext>;

pub(crate) fn create_consumer(
    spec: &PipelineSpec,
    source: &KafkaSourceSpec,
    dispatcher: Arc<Mutex<Dispatcher>>,
    telemetry: Arc<Telemetry>,
    stats_interval: Option<&str>,
) -> Result<KafkaConsumer, RunError> {
    let endpoint = kafka_client::Endpoint::of(spec, kafka_client::Connection::Source)
        .ok_or_else(|| RunError::Setup("source.kafka: the spec has no Kafka source".into()))?;
    let mut config = endpoint.config()?;
    let mut who = endpoint.identity();
    who.group = Some(source.group_id.clone());
    let access = crate::kafka_access::AccessReporter::new(who, telemetry.clone());
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
            dispatcher,
            telemetry,
            access,
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

impl Source for KafkaConsumer {
    fn pause(&self, tp: &TopicPartition) -> Result<(), String> {
        Consumer::pause(self, &tpl_of(tp)).map_err(|e| e.to_string())
    }

    fn resume(&self, tp: &TopicPartition) -> Result<(), String> {
        Consumer::resume(self, &tpl_of(tp)).map_err(|e| e.to_string())
    }

    /// Synchronous: the partitions must be settled before librdkafka lets them go.
    fn commit(&self, commits: &[(TopicPartition, i64)]) -> Result<bool, String> {
        if !commits.is_empty() {
            Consumer::commit(self, &tpl_of_commits(commits)?, CommitMode::Sync)
                .map_err(|e| e.to_string())?;
        }
        Ok(true)
    }

    fn commit_transaction(
        &self,
        sink: &KafkaSink,
        commits: &[(TopicPartition, i64)],
        timeout: Duration,
    ) -> Result<(), String> {
        let group = self
            .group_metadata()
            .ok_or("no consumer group metadata for the transaction")?;
        sink.commit_transaction(&tpl_of_commits(commits)?, &group, timeout)
            .map_err(|e| format!("transaction commit failed: {e}"))
    }
}

fn tpl_of(tp: &TopicPartition) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&tp.topic, tp.partition);
    tpl
}

/// `commits` as librdkafka's list (the offset is the next one to read).
pub(crate) fn tpl_of_commits(
    commits: &[(TopicPartition, i64)],
) -> Result<TopicPartitionList, String> {
    let mut tpl = TopicPartitionList::new();
    for (TopicPartition { topic, partition }, offset) in commits {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .map_err(|e| e.to_string())?;
    }
    Ok(tpl)
}
