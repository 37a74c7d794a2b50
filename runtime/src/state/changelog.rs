//! Changelog topics: one compacted topic per store and input topic
//! (`<group>-<topic>-<store>-changelog`), one partition per input partition. Created at start
//! when missing; read back on assignment (restore); tombstoned on a rewind (reset).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use redb::Durability;
use sluice_plugin_api::Record;

use super::{Local, RESTORE_CANCELLED};
use crate::config::StateSpec;
use crate::offsets::TopicPartition;
use crate::sink::kafka::{Ack, KafkaSink};
use crate::sync::lock;
use crate::telemetry::{
    RestoreFrom, StateReset, StateRestoreProgress, StateRestored, StateRestoring, Telemetry,
};

/// Buffered restore writes applied to redb in one transaction.
const RESTORE_APPLY_EVERY: usize = 65_536;
/// A restore that reads nothing for this long fails (the broker stopped answering).
const RESTORE_STALL: Duration = Duration::from_secs(60);
/// How long a restore waits for an open transaction in a changelog to end: Kafka's largest
/// `transaction.timeout.ms` (the broker's `transaction.max.timeout.ms`, 15 minutes by default)
/// and a minute for the coordinator to abort it.
const OPEN_TRANSACTION_WAIT: Duration = Duration::from_secs(16 * 60);

/// The changelog side of the stores.
pub(crate) struct Changelog {
    group: String,
    /// The pipeline's producer (none for `sluice state dump`, which only reads).
    sink: Option<Arc<KafkaSink>>,
    /// Watermarks, and the restore's reads (assigned, never subscribed: no group membership).
    /// It reads committed records only, so its high watermark is the last stable offset: where
    /// the first transaction still open starts.
    client: Mutex<BaseConsumer>,
    /// The log's real ends (`read_uncommitted` watermarks): a restore reads up to there, past
    /// the records of transactions still open when it starts, once they end.
    log_ends: Mutex<BaseConsumer>,
    timeout: Duration,
    /// Who the readers are to Kafka, for the messages of its refusals.
    who: crate::kafka_access::ClientIdentity,
}

impl Changelog {
    /// A changelog for consumer group `group`: `config` is the source's client configuration.
    pub(crate) fn new(
        group: &str,
        mut config: ClientConfig,
        sink: Option<Arc<KafkaSink>>,
        who: crate::kafka_access::ClientIdentity,
    ) -> Result<Changelog, String> {
        config
            .set("group.id", format!("{group}-state-restore"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .set("client.id", format!("sluice-{group}-state"));
        let client: BaseConsumer = config
            .create()
            .map_err(|e| format!("state: cannot create the changelog reader: {e}"))?;
        let log_ends: BaseConsumer = config
            .set("isolation.level", "read_uncommitted")
            .set("client.id", format!("sluice-{group}-state-ends"))
            .create()
            .map_err(|e| format!("state: cannot create the changelog reader: {e}"))?;
        Ok(Changelog {
            group: group.to_owned(),
            sink,
            client: Mutex::new(client),
            log_ends: Mutex::new(log_ends),
            timeout: Duration::from_secs(10),
            who,
        })
    }

    pub(crate) fn sink(&self) -> Option<&Arc<KafkaSink>> {
        self.sink.as_ref()
    }

    /// The changelog topic of `store` for input topic `topic`.
    pub(crate) fn topic(&self, topic: &str, store: &str) -> String {
        StateSpec::changelog_topic(&self.group, topic, store)
    }

    /// Every partition of the input `topics` (from the broker's metadata).
    pub(crate) fn partitions_of(&self, topics: &[String]) -> Result<Vec<TopicPartition>, String> {
        let client = lock(&self.client);
        let mut all = Vec::new();
        for topic in topics {
            let metadata = client
                .fetch_metadata(Some(topic), self.timeout)
                .map_err(|e| {
                    format!("cannot read the metadata of `{topic}` ({e}): is the broker reachable?")
                })?;
            for t in metadata.topics() {
                all.extend(
                    t.partitions()
                        .iter()
                        .map(|p| TopicPartition::new(topic, p.id())),
                );
            }
        }
        Ok(all)
    }

    /// Creates the missing changelog topics (compacted, as many partitions as their input
    /// topic) and checks the existing ones have enough partitions.
    pub(crate) fn ensure_topics(
        &self,
        admin: ClientConfig,
        inputs: &[String],
        state: &StateSpec,
        who: &crate::kafka_access::ClientIdentity,
    ) -> Result<(), String> {
        let stores = &state.stores;
        let client = lock(&self.client);
        let partitions = |topic: &str| -> Result<Option<usize>, String> {
            let metadata = client
                .fetch_metadata(Some(topic), self.timeout)
                .map_err(|e| format!("state: cannot read the metadata of `{topic}` ({e}): is the broker reachable?"))?;
            let refused = metadata
                .topics()
                .first()
                .and_then(|t| t.error())
                .is_some_and(|e| {
                    rdkafka::types::RDKafkaErrorCode::from(e)
                        == rdkafka::types::RDKafkaErrorCode::TopicAuthorizationFailed
                });
            if refused {
                let refusal = crate::kafka_access::denied(who, "Read", format!("topic {topic}"));
                return Err(format!("state: {}", refusal.message));
            }
            Ok(metadata
                .topics()
                .first()
                .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                .map(|t| t.partitions().len()))
        };
        let mut missing = Vec::new();
        for input in inputs {
            let count = partitions(input)?.ok_or_else(|| {
                format!("state: source topic `{input}` does not exist: create it before starting (its changelogs get one partition per partition of it)")
            })?;
            for store in stores {
                let changelog = self.topic(input, store);
                match partitions(&changelog)? {
                    Some(have) if have >= count => {}
                    Some(have) => {
                        return Err(format!(
                            "state: changelog topic `{changelog}` has {have} partitions, its source topic `{input}` {count}: add partitions to the changelog (kafka-topics --alter --partitions {count})"
                        ));
                    }
                    None => missing.push((changelog, count)),
                }
            }
        }
        drop(client);
        if missing.is_empty() {
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> = admin
            .create()
            .map_err(|e| format!("state: cannot create an admin client: {e}"))?;
        let replication = state.replication_factor.unwrap_or(-1);
        let topics: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|(name, count)| {
                let mut topic =
                    NewTopic::new(name, *count as i32, TopicReplication::Fixed(replication))
                        .set("cleanup.policy", "compact");
                for (key, value) in &state.changelog_config {
                    topic = topic.set(key, value);
                }
                topic
            })
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("state: {e}"))?;
        let results = runtime
            .block_on(admin.create_topics(
                &topics,
                &AdminOptions::new().operation_timeout(Some(self.timeout)),
            ))
            .map_err(|e| format!("state: cannot create the changelog topics: {e}"))?;
        for result in results {
            match result {
                Ok(topic) => tracing::info!(topic, "state: changelog topic created"),
                Err((topic, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                    tracing::debug!(topic, "state: changelog topic created meanwhile");
                }
                Err((topic, code)) => {
                    use rdkafka::types::RDKafkaErrorCode as Code;
                    let partitions = missing
                        .iter()
                        .find(|(n, _)| *n == topic)
                        .map_or(0, |(_, c)| *c);
                    if matches!(
                        code,
                        Code::TopicAuthorizationFailed | Code::ClusterAuthorizationFailed
                    ) {
                        let refusal =
                            crate::kafka_access::denied(who, "Create", format!("topic {topic}"));
                        return Err(format!("state: {}", refusal.message));
                    }
                    let what_to_do = match code {
                        Code::InvalidConfig | Code::PolicyViolation => {
                            "the broker refused its settings: fix `state.changelog-config`"
                                .to_owned()
                        }
                        Code::InvalidReplicationFactor => {
                            "fix `state.replication-factor` (at most the number of brokers)"
                                .to_owned()
                        }
                        _ => format!(
                            "create it (compacted, {partitions} partitions) or grant CreateTopics"
                        ),
                    };
                    return Err(format!(
                        "state: cannot create changelog topic `{topic}`: {code}: {what_to_do}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Per store, the changelog's end for `tp` (where a local copy closed now is current up to).
    pub(crate) fn ends(
        &self,
        stores: &[String],
        tp: &TopicPartition,
    ) -> Result<BTreeMap<String, i64>, KafkaError> {
        let client = lock(&self.client);
        stores
            .iter()
            .map(|store| {
                let topic = self.topic(&tp.topic, store);
                let (_, high) = client.fetch_watermarks(&topic, tp.partition, self.timeout)?;
                Ok((store.clone(), high))
            })
            .collect()
    }

    /// Brings every opened partition's stores up to their changelogs' ends: from the local
    /// checkpoint when it is usable, from the beginning otherwise.
    pub(super) fn restore(
        &self,
        stores: &[String],
        opened: &mut [(Local, BTreeMap<String, i64>)],
        telemetry: &Telemetry,
        cancel: &AtomicBool,
    ) -> Result<(), String> {
        if opened.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let client = lock(&self.client);
        let log_ends = lock(&self.log_ends);
        // changelog (topic, partition) -> (which partition, which store, end)
        let mut targets: HashMap<(String, i32), (usize, usize, i64)> = HashMap::new();
        let mut remaining: Vec<i64> = vec![0; opened.len()];
        let mut tpl = TopicPartitionList::new();
        for (i, (local, checkpoint)) in opened.iter_mut().enumerate() {
            let tp = local.tp.clone();
            let mut from = if checkpoint.is_empty() {
                RestoreFrom::Beginning
            } else {
                RestoreFrom::Checkpoint
            };
            for (s, store) in stores.iter().enumerate() {
                let topic = self.topic(&tp.topic, store);
                // The log's end, not the last stable offset: a transaction a dead pod left open
                // holds records committed after it back until the coordinator aborts it.
                let (low, high) = log_ends
                    .fetch_watermarks(&topic, tp.partition, self.timeout)
                    .map_err(|e| {
                        format!("state: cannot read the end of changelog {topic}/{} ({e}): is the broker reachable?", tp.partition)
                    })?;
                let start = match checkpoint.get(store) {
                    Some(&at) if (low..=high).contains(&at) => at,
                    stale => {
                        if stale.is_some() {
                            // Retention or a recreated topic: the local copy cannot be caught up.
                            local.clear(store).map_err(|e| local.io(store, e))?;
                            from = RestoreFrom::Beginning;
                        }
                        low
                    }
                };
                if start < high {
                    tpl.add_partition_offset(&topic, tp.partition, Offset::Offset(start))
                        .map_err(|e| format!("state: {topic}/{}: {e}", tp.partition))?;
                    targets.insert((topic, tp.partition), (i, s, high));
                    remaining[i] += high - start;
                }
            }
            telemetry.emit(StateRestoring {
                partition: &tp,
                records: remaining[i],
                from,
            });
        }
        let mut records = vec![0u64; opened.len()];
        let mut bytes = vec![0u64; opened.len()];
        if !targets.is_empty() {
            client
                .assign(&tpl)
                .map_err(|e| format!("state: cannot read the changelogs: {e}"))?;
            let result = self.read(
                &client,
                stores,
                opened,
                &mut targets,
                &mut remaining,
                &mut records,
                &mut bytes,
                telemetry,
                cancel,
            );
            let _ = client.unassign();
            result?;
        }
        for (i, (local, _)) in opened.iter_mut().enumerate() {
            local
                .apply(stores, Durability::None)
                .map_err(|e| local.io("*", e))?;
            telemetry.emit(StateRestored {
                partition: &local.tp,
                records: records[i],
                bytes: bytes[i],
                took: started.elapsed(),
            });
        }
        Ok(())
    }

    /// The restore's read loop: until every target's position reaches its end.
    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        client: &BaseConsumer,
        stores: &[String],
        opened: &mut [(Local, BTreeMap<String, i64>)],
        targets: &mut HashMap<(String, i32), (usize, usize, i64)>,
        remaining: &mut [i64],
        records: &mut [u64],
        bytes: &mut [u64],
        telemetry: &Telemetry,
        cancel: &AtomicBool,
    ) -> Result<(), String> {
        let mut last_read = Instant::now();
        let mut progress = Instant::now();
        // Changelog partitions whose reader waits at an open transaction (logged once each).
        let mut held = HashSet::new();
        let (mut held_back, mut last_look) = (false, Instant::now());
        let mut since = vec![(0u64, 0u64); opened.len()];
        while !targets.is_empty() {
            if cancel.load(AtomicOrdering::Relaxed) {
                return Err(RESTORE_CANCELLED.into());
            }
            match client.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => {
                    last_read = Instant::now();
                    let key = (message.topic().to_owned(), message.partition());
                    let Some(&(i, s, end)) = targets.get(&key) else {
                        continue;
                    };
                    let local = &mut opened[i].0;
                    let k = message.key().unwrap_or_default();
                    let v = message.payload();
                    let size = (k.len() + v.map_or(0, <[u8]>::len)) as u64;
                    local.buffers[s].insert(k.to_vec(), v.map(<[u8]>::to_vec));
                    local.buffered += 1;
                    if local.buffered >= RESTORE_APPLY_EVERY {
                        local
                            .apply(stores, Durability::None)
                            .map_err(|e| local.io(&stores[s], e))?;
                    }
                    records[i] += 1;
                    bytes[i] += size;
                    since[i].0 += 1;
                    since[i].1 += size;
                    remaining[i] -= 1;
                    if message.offset() + 1 >= end {
                        targets.remove(&key);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) | None => {
                    // Control records (transaction markers) end a changelog without a message:
                    // the position says where the reader is.
                    if let Ok(positions) = client.position() {
                        for e in positions.elements() {
                            if let Offset::Offset(at) = e.offset() {
                                let key = (e.topic().to_owned(), e.partition());
                                if targets.get(&key).is_some_and(|(_, _, end)| at >= *end) {
                                    targets.remove(&key);
                                }
                            }
                        }
                    }
                    if last_read.elapsed() > Duration::from_secs(1)
                        && last_look.elapsed() >= Duration::from_secs(1)
                    {
                        last_look = Instant::now();
                        held_back = self.held_by_open_transactions(client, targets, &mut held);
                    }
                    if held_back && last_read.elapsed() > OPEN_TRANSACTION_WAIT {
                        return Err(format!(
                            "state: restore waited {}s for open transactions in {} changelog partitions to end ({}): end them (the producer's transactional id) or check the broker's transaction coordinator",
                            OPEN_TRANSACTION_WAIT.as_secs(),
                            targets.len(),
                            targets
                                .keys()
                                .map(|(t, p)| format!("{t}/{p}"))
                                .collect::<Vec<_>>()
                                .join(" ")
                        ));
                    }
                    if !held_back && last_read.elapsed() > RESTORE_STALL {
                        return Err(format!(
                            "state: restore read nothing for {}s with {} changelog partitions unfinished: is the broker reachable?",
                            RESTORE_STALL.as_secs(),
                            targets.len()
                        ));
                    }
                }
                Some(Err(err)) => {
                    if err.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::TopicAuthorizationFailed)
                    {
                        let mut topics: Vec<&str> =
                            targets.keys().map(|(t, _)| t.as_str()).collect();
                        topics.sort_unstable();
                        topics.dedup();
                        let refusal = crate::kafka_access::denied(
                            &self.who,
                            "Read",
                            format!("topic {}", topics.join(", ")),
                        );
                        telemetry.emit(crate::telemetry::KafkaAccessDenied {
                            client: self.who.section,
                            refusal: &refusal,
                        });
                        return Err(format!("state: restore: {}", refusal.message));
                    }
                    tracing::warn!("state: changelog reader: {err}")
                }
            }
            if progress.elapsed() >= Duration::from_secs(1) || targets.is_empty() {
                progress = Instant::now();
                for (i, (local, _)) in opened.iter().enumerate() {
                    let (n, b) = std::mem::take(&mut since[i]);
                    if n > 0 {
                        telemetry.emit(StateRestoreProgress {
                            partition: &local.tp,
                            store: "*",
                            records: n,
                            bytes: b,
                            remaining: remaining[i],
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether every unfinished changelog partition waits at an open transaction: its reader
    /// reached the last stable offset and the log goes on beyond it (a pod that died mid
    /// transaction under a transactional id nobody reuses leaves one open until the transaction
    /// coordinator aborts it, after the producer's `transaction.timeout.ms`). Records committed
    /// after such a transaction are part of the state: the restore waits for it to end rather
    /// than stop short. Logs each newly held partition once.
    fn held_by_open_transactions(
        &self,
        client: &BaseConsumer,
        targets: &HashMap<(String, i32), (usize, usize, i64)>,
        held: &mut HashSet<(String, i32)>,
    ) -> bool {
        let Ok(positions) = client.position() else {
            return false;
        };
        let mut all = !targets.is_empty();
        for e in positions.elements() {
            let key = (e.topic().to_owned(), e.partition());
            let (Some(&(_, _, end)), Offset::Offset(at)) = (targets.get(&key), e.offset()) else {
                continue;
            };
            let stable = client
                .fetch_watermarks(&key.0, key.1, self.timeout)
                .map(|(_, stable)| stable);
            match stable {
                Ok(stable) if at >= stable && stable < end => {
                    if held.insert(key.clone()) {
                        tracing::warn!(
                            changelog = %format!("{}/{}", key.0, key.1),
                            at = stable,
                            end,
                            "state: an open transaction holds the restore (a pod that died mid-transaction?): waiting for it to commit or abort (at most the producer's transaction.timeout.ms and a minute)"
                        );
                    }
                }
                _ => all = false,
            }
        }
        all
    }

    /// Resets `local`'s stores to empty: a tombstone in the changelog for every key, then the
    /// local copy cleared. The tombstones go before any of the partition's new writes.
    pub(super) fn reset(
        &self,
        stores: &[String],
        local: &mut Local,
        why: &str,
        telemetry: &Telemetry,
    ) -> Result<(), String> {
        let mut keys = 0u64;
        let ack = Arc::new(Ack::many(Vec::new()));
        let sink = self
            .sink
            .as_ref()
            .ok_or_else(|| format!("state: reset of {}: no producer", local.tp))?;
        for (s, store) in stores.iter().enumerate() {
            let topic = self.topic(&local.tp.topic, store);
            let mut after: Option<Vec<u8>> = None;
            loop {
                let (page, more) = local.page(s, store, b"", after.as_deref())?;
                after = page.keys().next_back().cloned();
                for (key, value) in page {
                    if value.is_none() {
                        continue;
                    }
                    let record = Record::to("")
                        .key(&key)
                        .tombstone()
                        .partition(local.tp.partition);
                    sink.send(&topic, &record, ack.clone())
                        .map_err(|e| format!("state: reset of {}: {e}", local.tp))?;
                    keys += 1;
                }
                if !more {
                    break;
                }
            }
            local.buffers[s].clear();
            local.clear(store).map_err(|e| local.io(store, e))?;
        }
        local.buffered = 0;
        if keys == 0 {
            return Ok(()); // nothing was there: nothing to say
        }
        telemetry.emit(StateReset {
            partition: &local.tp,
            keys,
            why,
        });
        Ok(())
    }
}
