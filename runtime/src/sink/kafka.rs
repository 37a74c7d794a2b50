//! The Kafka sink: one idempotent producer for all of a pipeline's Kafka outputs. Every record
//! carries the units it came from; its delivery report acknowledges them in the offset tracker.
//! A record that finally fails is never acknowledged, so the source offset cannot move past the
//! event that produced it, and the pipeline is stopped with the error.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message, TopicPartitionList};
use sluice_plugin_api::abi::Record;

use crate::fatal::Fatal;
use crate::offsets::{OffsetTracker, TopicPartition, UnitId};

/// What a delivered record acknowledges. Shared by every record of one plugin call.
#[derive(Debug)]
pub enum Ack {
    /// One unit.
    One(TopicPartition, UnitId),
    /// Several units (a record emitted by `flush`, which may derive from any of them).
    Many(Vec<(TopicPartition, UnitId)>),
}

impl Ack {
    /// The units acknowledged.
    pub fn units(&self) -> impl Iterator<Item = (&TopicPartition, UnitId)> {
        let (one, many) = match self {
            Ack::One(tp, unit) => (Some((tp, *unit)), &[][..]),
            Ack::Many(units) => (None, units.as_slice()),
        };
        one.into_iter()
            .chain(many.iter().map(|(tp, unit)| (tp, *unit)))
    }
}

/// State shared with the producer's delivery callback.
#[derive(Debug)]
pub struct DeliveryContext {
    tracker: Arc<Mutex<OffsetTracker>>,
    failure: Fatal,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Arc<Ack>;

    fn delivery(&self, result: &DeliveryResult<'_>, ack: Arc<Ack>) {
        match result {
            Ok(_) => {
                let mut tracker = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
                for (tp, unit) in ack.units() {
                    tracker.acked(tp, unit);
                }
            }
            Err((err, message)) => {
                // librdkafka already retried for message.timeout.ms; the units stay unacknowledged.
                self.failure.set(format!(
                    "delivery to topic {} failed: {err}",
                    message.topic()
                ));
            }
        }
    }
}

/// The pipeline's producer.
pub struct KafkaSink {
    producer: ThreadedProducer<DeliveryContext>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink").finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// Creates the producer. `config` must carry bootstrap servers and any pass-through
    /// properties; idempotence and `acks=all` are set here.
    pub fn new(
        mut config: ClientConfig,
        tracker: Arc<Mutex<OffsetTracker>>,
        failure: Fatal,
        transactional_id: Option<&str>,
    ) -> Result<Self, KafkaError> {
        config.set("enable.idempotence", "true").set("acks", "all");
        if let Some(id) = transactional_id {
            config.set("transactional.id", id);
        }
        let producer: ThreadedProducer<DeliveryContext> =
            config.create_with_context(DeliveryContext { tracker, failure })?;
        if transactional_id.is_some() {
            // Fences any earlier producer with the same id and aborts its open transaction.
            producer.init_transactions(Duration::from_secs(60))?;
            producer.begin_transaction()?;
        }
        Ok(KafkaSink { producer })
    }

    /// Transactions: commits the open transaction with the source `offsets` (for the consumer
    /// group `group`), then begins the next one. Everything sent so far must be delivered
    /// (`flush`) and every unit complete, so the offsets cover exactly what the transaction
    /// holds.
    pub fn commit_transaction(
        &self,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
        timeout: Duration,
    ) -> Result<(), KafkaError> {
        if offsets.count() > 0 {
            self.producer
                .send_offsets_to_transaction(offsets, group, timeout)?;
        }
        self.producer.commit_transaction(timeout)?;
        self.producer.begin_transaction()
    }

    /// Transactions: aborts the open transaction (its records are never visible to
    /// `read_committed` consumers, and its offsets are not committed).
    pub fn abort_transaction(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.abort_transaction(timeout)
    }

    /// Sends a record to `topic` on behalf of `ack`'s units; the caller counts it as emitted for
    /// them (`OffsetTracker::emitted`) before it marks them processed. Waits while the producer
    /// queue is full.
    pub fn send(&self, topic: &str, record: &Record<'_>, ack: Arc<Ack>) -> Result<(), String> {
        let headers = (!record.header_list().is_empty()).then(|| {
            record.header_list().iter().fold(
                OwnedHeaders::new_with_capacity(record.header_list().len()),
                |hs, h| {
                    hs.insert(Header {
                        key: h.key(),
                        value: Some(h.value()),
                    })
                },
            )
        });
        let mut base = BaseRecord::<[u8], [u8], Arc<Ack>>::with_opaque_to(topic, ack);
        if let Some(key) = record.key_bytes() {
            base = base.key(key);
        }
        if let Some(value) = record.value_bytes() {
            base = base.payload(value);
        }
        if let Some(headers) = headers {
            base = base.headers(headers);
        }
        if let Some(partition) = record.partition_hint() {
            base = base.partition(partition);
        }
        loop {
            match self.producer.send(base) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    base = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                // The record stays counted and unacknowledged: the unit never completes.
                Err((err, _)) => return Err(format!("cannot produce to topic {topic}: {err}")),
            }
        }
    }

    /// Waits for every queued record to be delivered (or fail), up to `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }
}
