//! Rebalances: librdkafka's callbacks (run inside `poll` on the poll thread), which hand the
//! dispatcher its partitions: before an assignment its start offsets are placed (`start-from`,
//! `--reset`), after it the dispatcher assigns; on revoke the dispatcher releases (drained,
//! flushed, acknowledged and committed, or committed into the open transaction) before
//! librdkafka lets the partitions go. The consumer's statistics callback is here too (the
//! context is one type), handing over to `statistics`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::config::StartFrom;
use crate::dispatch::Dispatcher;
use crate::offsets::TopicPartition;
use crate::sync::lock;
use crate::telemetry::Telemetry;

/// The consumer's context: its rebalance callbacks (which call the dispatcher) and its
/// statistics.
pub(crate) struct RebalanceContext {
    pub(crate) dispatcher: Arc<Mutex<Dispatcher>>,
    pub(crate) telemetry: Arc<Telemetry>,
    /// Explains Kafka's refusals (login, TLS, ACLs).
    pub(crate) access: crate::kafka_access::AccessReporter,
    pub(crate) start: StartPlan,
    /// Partitions of the assignment in progress that start from `start-from` (placed in
    /// `pre_rebalance`): their state is reset in `post_rebalance`, never ahead of the input.
    pub(crate) fresh: Mutex<(HashSet<TopicPartition>, &'static str)>,
    /// The brokers' connections and the leaders as the statistics said last (`statistics.rs`).
    pub(crate) brokers: Mutex<super::statistics::BrokerWatch>,
}

/// Where newly assigned partitions start: `source.kafka.start-from` for partitions the group has
/// no committed offset for, and for every partition (once per process) with `sluice run
/// --reset`. Set on the assignment itself (before librdkafka fetches anything), so nothing is
/// read from anywhere else first.
pub(crate) struct StartPlan {
    pub(crate) from: StartFrom,
    pub(crate) reset: bool,
    /// Partitions `--reset` already placed: a rebalance that hands one back does not rewind it
    /// again.
    pub(crate) placed: Mutex<HashSet<TopicPartition>>,
    /// The pipeline has state: partitions without a committed offset are found even when
    /// `auto.offset.reset` places them, so their state starts empty too.
    pub(crate) state: bool,
}

impl StartPlan {
    /// Sets the start offsets of the partitions of `tpl` that need one; returns the partitions
    /// that start from `start-from` and why.
    fn place(
        &self,
        consumer: &BaseConsumer<RebalanceContext>,
        tpl: &TopicPartitionList,
    ) -> Result<(HashSet<TopicPartition>, &'static str), String> {
        let explicit = matches!(self.from, StartFrom::Time { .. } | StartFrom::Offsets(_));
        if !self.reset && !explicit && !self.state {
            // earliest / latest without committed offsets: auto.offset.reset
            return Ok((HashSet::new(), ""));
        }
        let mut placed = lock(&self.placed);
        let tp_of = |e: &rdkafka::topic_partition_list::TopicPartitionListElem<'_>| {
            TopicPartition::new(e.topic(), e.partition())
        };
        let candidates: Vec<TopicPartition> = tpl
            .elements()
            .iter()
            .map(tp_of)
            .filter(|tp| !placed.contains(tp))
            .collect();
        if candidates.is_empty() {
            return Ok((HashSet::new(), ""));
        }
        let timeout = Duration::from_secs(10);
        let (needs, why): (HashSet<TopicPartition>, &str) = if self.reset {
            (candidates.into_iter().collect(), "--reset")
        } else {
            let mut query = TopicPartitionList::new();
            for tp in &candidates {
                query.add_partition(&tp.topic, tp.partition);
            }
            let committed = consumer.committed_offsets(query, timeout).map_err(|e| {
                format!("start-from: cannot read the group's committed offsets ({e}): is the broker reachable?")
            })?;
            let needs = committed
                .elements()
                .iter()
                .filter(|e| matches!(e.offset(), Offset::Invalid))
                .map(tp_of)
                .collect();
            (needs, "no committed offset")
        };
        if needs.is_empty() || (!self.reset && !explicit) {
            // Earliest / latest: auto.offset.reset places them; only the state needs to know.
            return Ok((needs, why));
        }
        let positions: HashMap<TopicPartition, Offset> = match &self.from {
            StartFrom::Earliest => needs
                .iter()
                .map(|tp| (tp.clone(), Offset::Beginning))
                .collect(),
            StartFrom::Latest => needs.iter().map(|tp| (tp.clone(), Offset::End)).collect(),
            StartFrom::Offsets(offsets) => needs
                .iter()
                .map(|tp| {
                    let at = offsets.get(&(tp.topic.clone(), tp.partition));
                    (
                        tp.clone(),
                        at.map_or(Offset::Beginning, |o| Offset::Offset(*o)),
                    )
                })
                .collect(),
            StartFrom::Time { ms, text } => {
                let mut query = TopicPartitionList::new();
                for tp in &needs {
                    query
                        .add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*ms))
                        .map_err(|e| format!("start-from: {tp}: {e}"))?;
                }
                let found = consumer.offsets_for_times(query, timeout).map_err(|e| {
                    format!(
                        "start-from: {text}: the broker did not answer the lookup by time ({e})"
                    )
                })?;
                found
                    .elements()
                    .iter()
                    .map(|e| {
                        // No event at or after the time: the end.
                        let at = match e.offset() {
                            Offset::Offset(o) if o >= 0 => Offset::Offset(o),
                            _ => Offset::End,
                        };
                        (tp_of(e), at)
                    })
                    .collect()
            }
        };
        for mut e in tpl.elements() {
            let tp = tp_of(&e);
            let Some(at) = positions.get(&tp) else {
                continue;
            };
            e.set_offset(*at)
                .map_err(|err| format!("start-from: {tp}: {err}"))?;
            let offset = match at {
                Offset::Offset(o) => o.to_string(),
                Offset::Beginning => "earliest".into(),
                Offset::End => "latest".into(),
                other => format!("{other:?}"),
            };
            tracing::info!(partition = %tp, offset, why, "starting the partition from start-from");
            if self.reset {
                placed.insert(tp);
            }
        }
        Ok((needs, why))
    }
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            match self.start.place(consumer, tpl) {
                Ok(fresh) => *lock(&self.fresh) = fresh,
                Err(err) => {
                    use crate::status::Lifecycle;
                    if matches!(
                        self.telemetry.health.lifecycle(),
                        Lifecycle::Draining | Lifecycle::Stopped
                    ) {
                        // Handed partitions while stopping (another member left at the same
                        // time): nothing of them is processed or committed here, and the group
                        // hands them on when this pod leaves. Not a failure of the run.
                        tracing::warn!("partitions assigned while stopping are not started: {err}");
                    } else {
                        // Never start somewhere else than asked: the pipeline stops.
                        lock(&self.dispatcher).failure().set(err);
                    }
                }
            }
        }
        if let Rebalance::Revoke(tpl) = rebalance {
            let partitions: Vec<TopicPartition> = tpl
                .elements()
                .iter()
                .map(|e| TopicPartition::new(e.topic(), e.partition()))
                .collect();
            lock(&self.dispatcher).release(consumer, &partitions);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // librdkafka keeps a partition's pause flag across unassign and assign: a partition
            // revoked while paused would come back paused, and its fresh slot would never resume.
            if let Err(err) = consumer.resume(tpl) {
                tracing::warn!("resume of newly assigned partitions failed: {err}");
            }
            let partitions: Vec<TopicPartition> = tpl
                .elements()
                .iter()
                .map(|e| TopicPartition::new(e.topic(), e.partition()))
                .collect();
            let (fresh, why) = std::mem::take(&mut *lock(&self.fresh));
            let mut dispatcher = lock(&self.dispatcher);
            if let Err(err) = dispatcher.assign(consumer, &partitions, &fresh, why) {
                dispatcher.failure().set(err);
            }
        }
    }
}

impl ClientContext for RebalanceContext {
    /// librdkafka's global errors: a refusal is explained once (`kafka_access`), the rest
    /// logged as rdkafka does.
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if !self.access.report(&error, reason) {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }

    /// librdkafka's statistics (every `admin.lag-interval-ms`): see `statistics`.
    fn stats_raw(&self, statistics: &[u8]) {
        super::statistics::observe(statistics, &self.brokers, &self.telemetry);
    }
}
