//! `sluice dlq replay`: re-injects dead letters into the topic their events came from (or
//! another), once the fix is deployed, so the pipeline processes them again.
//!
//! At-least-once: the replay reads the dead-letter topic as consumer group `--group` (default
//! `sluice-dlq-replay`), produces each selected dead letter with an idempotent producer, and
//! commits its position in the dead-letter topic only after every produced record was
//! delivered. A replay that dies is run again and resumes from its last commit (repeating at
//! most what it produced since). It stops at the end of the dead-letter topic as it was when
//! the replay started. The provenance headers are dropped from the replayed record, which
//! carries `sluice.replayed-from` (`topic/partition@offset` of the dead letter) instead.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};

use crate::dead_letter::header;
use crate::offsets::TopicPartition;
use crate::sync::lock;

/// Which dead letters to replay and where to.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// The clients' settings: bootstrap servers, security, properties (from a spec's
    /// [`Endpoint`](crate::kafka_client::Endpoint) or the command line).
    pub client: ClientConfig,
    /// The dead-letter topic.
    pub dlq_topic: String,
    /// Target topic; default: each dead letter's `sluice.source.topic`.
    pub to_topic: Option<String>,
    /// Only these failure classes (empty: all).
    pub classes: Vec<String>,
    /// Only dead letters written at or after this time (ms since the epoch).
    pub since_ms: Option<u64>,
    /// Only dead letters written before this time (ms since the epoch).
    pub until_ms: Option<u64>,
    /// Only events from source offsets at or after this one.
    pub from_offset: Option<i64>,
    /// Only events from source offsets at or before this one.
    pub to_offset: Option<i64>,
    /// The replay's consumer group (its position in the dead-letter topic).
    pub group: String,
}

impl ReplayOptions {
    /// Whether the filters select a dead letter with these headers.
    pub fn selects<H: Headers>(&self, headers: Option<&H>) -> bool {
        let class = header_str(headers, header::CLASS).unwrap_or("");
        let time: Option<u64> = header_str(headers, header::TIME).and_then(|t| t.parse().ok());
        let source_offset: Option<i64> =
            header_str(headers, header::OFFSET).and_then(|t| t.parse().ok());
        (self.classes.is_empty() || self.classes.iter().any(|c| c == class))
            && self.since_ms.is_none_or(|s| time.is_some_and(|t| t >= s))
            && self.until_ms.is_none_or(|u| time.is_some_and(|t| t < u))
            && self
                .from_offset
                .is_none_or(|f| source_offset.is_some_and(|o| o >= f))
            && self
                .to_offset
                .is_none_or(|t| source_offset.is_some_and(|o| o <= t))
    }

    /// Where each partition of the dead-letter topic ends now.
    pub fn end_offsets(&self) -> Result<HashMap<TopicPartition, i64>, String> {
        let consumer: BaseConsumer = self
            .client
            .clone()
            .create()
            .map_err(|e| format!("cannot create a consumer: {e}"))?;
        let timeout = Duration::from_secs(30);
        let topic = &self.dlq_topic;
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| format!("dead-letter topic {topic}: {e}"))?;
        let mut end = HashMap::new();
        for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let (_, high) = consumer
                .fetch_watermarks(topic, p.id(), timeout)
                .map_err(|e| format!("{topic}/{}: {e}", p.id()))?;
            end.insert(TopicPartition::new(topic.clone(), p.id()), high);
        }
        if end.is_empty() {
            return Err(format!(
                "dead-letter topic {topic} does not exist: check --topic"
            ));
        }
        Ok(end)
    }
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Dead letters read.
    pub read: u64,
    /// Re-injected.
    pub replayed: u64,
    /// Left out by the filters.
    pub filtered: u64,
    /// Per target topic.
    pub per_topic: BTreeMap<String, u64>,
}

impl std::fmt::Display for ReplaySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let per: Vec<String> = self
            .per_topic
            .iter()
            .map(|(t, n)| format!("{t}: {n}"))
            .collect();
        write!(
            f,
            "replayed {} of {} dead letters ({}), {} left out by the filters",
            self.replayed,
            self.read,
            per.join(", "),
            self.filtered
        )
    }
}

fn header_str<'a, H: Headers>(headers: Option<&'a H>, key: &str) -> Option<&'a str> {
    headers?
        .iter()
        .filter(|h| h.key == key)
        .last()
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Counts failed deliveries: a replay with any commits nothing.
#[derive(Debug, Default)]
struct Deliveries {
    failed: std::sync::atomic::AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((err, _)) = result {
            self.failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            lock(&self.first_error).get_or_insert_with(|| err.to_string());
        }
    }
}

/// Runs a replay to the end of the dead-letter topic as it is now.
pub fn replay(options: &ReplayOptions) -> Result<ReplaySummary, String> {
    let consumer: BaseConsumer = options
        .client
        .clone()
        .set("group.id", &options.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()
        .map_err(|e| format!("cannot create the consumer: {e}"))?;
    let producer: ThreadedProducer<Deliveries> = options
        .client
        .clone()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create_with_context(Deliveries::default())
        .map_err(|e| format!("cannot create the producer: {e}"))?;
    let timeout = Duration::from_secs(30);
    let topic = &options.dlq_topic;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| format!("dead-letter topic {topic}: {e}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(format!(
            "dead-letter topic {topic} does not exist (or has no partitions): check --topic"
        ));
    }
    // Where the group stopped last time, and where the topic ends now.
    let mut wanted = TopicPartitionList::new();
    for p in &partitions {
        wanted.add_partition(topic, *p);
    }
    let committed = consumer
        .committed_offsets(wanted, timeout)
        .map_err(|e| format!("cannot read group {}'s offsets: {e}", options.group))?;
    let mut start = TopicPartitionList::new();
    let mut end: BTreeMap<i32, i64> = BTreeMap::new();
    for p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *p, timeout)
            .map_err(|e| format!("{topic}/{p}: {e}"))?;
        let from = committed
            .find_partition(topic, *p)
            .and_then(|e| e.offset().to_raw())
            .filter(|o| *o >= 0)
            .unwrap_or(low);
        if from < high {
            end.insert(*p, high);
            start
                .add_partition_offset(topic, *p, Offset::Offset(from))
                .map_err(|e| e.to_string())?;
        }
    }
    let mut summary = ReplaySummary::default();
    if end.is_empty() {
        return Ok(summary);
    }
    consumer
        .assign(&start)
        .map_err(|e| format!("cannot read {topic}: {e}"))?;
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut idle_since = Instant::now();
    while next
        .iter()
        .filter(|(p, o)| end.get(p).is_some_and(|e| *o >= e))
        .count()
        < end.len()
    {
        let message = match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(format!("reading {topic}: {e}")),
            None => {
                if idle_since.elapsed() > timeout {
                    return Err(format!("reading {topic}: no progress for 30 s"));
                }
                continue;
            }
        };
        idle_since = Instant::now();
        let (p, offset) = (message.partition(), message.offset());
        next.insert(p, offset + 1);
        if end.get(&p).is_none_or(|e| offset >= *e) {
            continue; // written after the replay started
        }
        summary.read += 1;
        let headers = message.headers();
        if !options.selects(headers) {
            summary.filtered += 1;
            continue;
        }
        let target = match (&options.to_topic, header_str(headers, header::TOPIC)) {
            (Some(t), _) => t.clone(),
            (None, Some(t)) => t.to_owned(),
            (None, None) => {
                return Err(format!(
                    "{topic}/{p}@{offset}: no {} header: pass --to-topic",
                    header::TOPIC
                ));
            }
        };
        let replayed_from = format!("{topic}/{p}@{offset}");
        let mut out = OwnedHeaders::new();
        if let Some(hs) = headers {
            for h in hs.iter().filter(|h| !h.key.starts_with("sluice.")) {
                out = out.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        out = out.insert(Header {
            key: "sluice.replayed-from",
            value: Some(replayed_from.as_bytes()),
        });
        let mut record = BaseRecord::<[u8], [u8]>::to(&target).headers(out);
        if let Some(k) = message.key() {
            record = record.key(k);
        }
        if let Some(v) = message.payload() {
            record = record.payload(v);
        }
        let mut record = record;
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    back,
                )) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(format!("producing to {target}: {e}")),
            }
        }
        summary.replayed += 1;
        *summary.per_topic.entry(target).or_default() += 1;
    }
    producer
        .flush(timeout)
        .map_err(|e| format!("not every replayed record was delivered ({e}); nothing was committed: run the replay again"))?;
    let failed = producer
        .context()
        .failed
        .load(std::sync::atomic::Ordering::Relaxed);
    if failed > 0 {
        let first = producer
            .context()
            .first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default();
        return Err(format!(
            "{failed} replayed records were not delivered (first: {first}); nothing was committed: run the replay again"
        ));
    }
    let mut commit = TopicPartitionList::new();
    for (p, o) in &next {
        commit
            .add_partition_offset(topic, *p, Offset::Offset(*o))
            .map_err(|e| e.to_string())?;
    }
    consumer
        .commit(&commit, CommitMode::Sync)
        .map_err(|e| format!("replayed, but committing the replay's position failed ({e}): a rerun repeats this replay"))?;
    Ok(summary)
}
