//! The Kafka sink: one idempotent producer for all of a pipeline's Kafka outputs. Every record
//! carries the units it came from; its delivery report acknowledges them in the offset tracker.
//! A record that finally fails is never acknowledged, so the source offset cannot move past the
//! event that produced it, and the pipeline is stopped with the error.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::Histogram;
use rdkafka::ClientConfig;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message, TopicPartitionList};

use crate::kafka_access::{AccessReporter, ClientIdentity};
use sluice_plugin_api::abi::Record;

use crate::fatal::Fatal;
use crate::offsets::{OffsetTracker, TopicPartition, UnitId};
use crate::sink::SinkError;
use crate::sync::lock;
use crate::telemetry::{DeliveryFailed, ProducerReachability, Telemetry};

/// The units a record acknowledges.
#[derive(Debug)]
pub enum Units {
    /// One unit.
    One(TopicPartition, UnitId),
    /// Several units (a record emitted by `flush`, which may derive from any of them).
    Many(Vec<(TopicPartition, UnitId)>),
}

/// What a delivered record acknowledges. Shared by every record of one plugin call.
#[derive(Debug)]
pub struct Ack {
    units: Units,
    /// The earliest timestamp (ms since the epoch) of the call's events, for the end-to-end
    /// latency; none for records emitted by `flush` or hooks.
    pub event_time_ms: Option<i64>,
}

impl Ack {
    /// Acknowledges `units`.
    pub fn new(units: Units, event_time_ms: Option<i64>) -> Ack {
        Ack {
            units,
            event_time_ms,
        }
    }

    /// Acknowledges `units`, with no event time.
    pub fn many(units: Vec<(TopicPartition, UnitId)>) -> Ack {
        Ack::new(Units::Many(units), None)
    }

    /// The units acknowledged.
    pub fn units(&self) -> impl Iterator<Item = (&TopicPartition, UnitId)> {
        let (one, many) = match &self.units {
            Units::One(tp, unit) => (Some((tp, *unit)), &[][..]),
            Units::Many(units) => (None, units.as_slice()),
        };
        one.into_iter()
            .chain(many.iter().map(|(tp, unit)| (tp, *unit)))
    }

    /// Seconds from the event time to now, if there is an event time.
    pub fn age_seconds(&self) -> Option<f64> {
        let ts = self.event_time_ms?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_millis() as i64;
        Some((now - ts).max(0) as f64 / 1000.0)
    }
}

/// State shared with the producer's delivery callback.
pub struct DeliveryContext {
    tracker: Arc<Mutex<OffsetTracker>>,
    failure: Fatal,
    telemetry: Arc<Telemetry>,
    /// Output name and end-to-end latency histogram per topic (dead letters: `dead-letters`).
    outputs: HashMap<String, (String, Histogram)>,
    /// Whether any broker connection is up (from librdkafka's statistics).
    pub reachable: Arc<AtomicBool>,
    /// The Kafka outputs' names, for the reachability log lines.
    output_names: String,
    /// Some broker connection was up once (before that, "none up" is start-up, not an outage).
    connected: AtomicBool,
    /// Explains Kafka's refusals (login, TLS, ACLs).
    access: AccessReporter,
    /// Topics a transaction could not add (not authorized), with the explanation: the records
    /// it purged fail with `PurgeQueue`, which does not say why.
    refused: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for DeliveryContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryContext").finish_non_exhaustive()
    }
}

impl ClientContext for DeliveryContext {
    /// librdkafka's global errors: a refusal is explained once (`kafka_access`), the rest
    /// logged as rdkafka does.
    fn error(&self, error: KafkaError, reason: &str) {
        if !self.access.report(&error, reason) {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        if let Some(refusal) = self.access.log(level, fac, message) {
            let topic = refusal.subject.trim_start_matches("topic ").to_owned();
            lock(&self.refused).insert(topic, refusal.message);
        }
    }

    fn stats_raw(&self, statistics: &[u8]) {
        // Reachable while librdkafka has a connection to some broker that is up.
        let Ok(stats) = serde_json::from_slice::<serde_json::Value>(statistics) else {
            return;
        };
        let up = stats["brokers"]
            .as_object()
            .is_some_and(|brokers| brokers.values().any(|b| b["state"] == "UP"));
        if up {
            self.connected.store(true, Ordering::Relaxed);
        } else if !self.connected.load(Ordering::Relaxed) {
            return;
        }
        self.telemetry.emit(ProducerReachability {
            up,
            outputs: &self.output_names,
            reachable: &self.reachable,
        });
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Arc<Ack>;

    fn delivery(&self, result: &DeliveryResult<'_>, ack: Arc<Ack>) {
        match result {
            Ok(message) => {
                {
                    let mut tracker = lock(&self.tracker);
                    for (tp, unit) in ack.units() {
                        tracker.acked(tp, unit);
                    }
                }
                if self.telemetry.metrics.enabled {
                    if let (Some((_, latency)), Some(age)) =
                        (self.outputs.get(message.topic()), ack.age_seconds())
                    {
                        latency.observe(age);
                    }
                }
            }
            Err((err, message)) => {
                let output = self
                    .outputs
                    .get(message.topic())
                    .map_or("dead-letters", |(o, _)| o.as_str());
                self.telemetry.emit(DeliveryFailed { output });
                // librdkafka already retried for message.timeout.ms; the units stay unacknowledged.
                let refused = lock(&self.refused).get(message.topic()).cloned();
                let why = match (refused, self.access.delivery_refused(err, message.topic())) {
                    (Some(message), _)
                    | (None, Some(crate::kafka_access::Refusal { message, .. })) => message,
                    (None, None) => err.to_string(),
                };
                self.failure.set(format!(
                    "delivery to topic {} failed: {why}",
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
    /// `outputs` maps each Kafka output's topic to its output name (for metrics).
    pub fn new(
        mut config: ClientConfig,
        tracker: Arc<Mutex<OffsetTracker>>,
        failure: Fatal,
        transactional_id: Option<&str>,
        telemetry: Arc<Telemetry>,
        outputs: &HashMap<String, String>,
        who: ClientIdentity,
    ) -> Result<Self, String> {
        config.set("enable.idempotence", "true").set("acks", "all");
        if let Some(id) = transactional_id {
            config.set("transactional.id", id);
        }
        let mut names: Vec<&str> = outputs.values().map(String::as_str).collect();
        names.sort_unstable();
        names.dedup();
        let output_names = names.join(",");
        let outputs = outputs
            .iter()
            .map(|(topic, output)| {
                let latency = telemetry
                    .metrics
                    .end_to_end_seconds
                    .with_label_values(&[output]);
                (topic.clone(), (output.clone(), latency))
            })
            .collect();
        let access = AccessReporter::new(who, telemetry.clone());
        let explain = access.clone();
        let fail = move |e: KafkaError| explain.explain(&e).unwrap_or_else(|| e.to_string());
        let context = DeliveryContext {
            access,
            refused: Mutex::default(),
            tracker,
            failure,
            telemetry,
            outputs,
            reachable: Arc::new(AtomicBool::new(true)),
            output_names,
            connected: AtomicBool::new(false),
        };
        let producer: ThreadedProducer<DeliveryContext> =
            config.create_with_context(context).map_err(&fail)?;
        if transactional_id.is_some() {
            // Fences any earlier producer with the same id and aborts its open transaction.
            producer
                .init_transactions(Duration::from_secs(60))
                .map_err(&fail)?;
            producer.begin_transaction().map_err(&fail)?;
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
    pub fn send(&self, topic: &str, record: &Record<'_>, ack: Arc<Ack>) -> Result<(), SinkError> {
        let headers = (!record.header_list().is_empty()).then(|| {
            record
                .header_list()
                .iter()
                .filter(|h| !crate::schema::is_decoding_header(h.key()))
                .fold(
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
                Err((source, _)) => {
                    return Err(SinkError::Produce {
                        topic: topic.to_owned(),
                        source,
                    });
                }
            }
        }
    }

    /// Whether the producer can reach a broker (readiness).
    pub fn reachable(&self) -> Arc<AtomicBool> {
        self.producer.context().reachable.clone()
    }

    /// Waits for every queued record to be delivered (or fail), up to `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }
}
