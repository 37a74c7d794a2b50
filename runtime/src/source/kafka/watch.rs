//! The watchdog: once a second, on the poll thread, observe what the pod knows (assignment, lag
//! and progress per partition, the group's lag when it holds nothing, sinks, commits), ask
//! `condition::decide`, publish a change (`ConditionChanged`), and run the remedy
//! (`condition::Remedy`): leave the group and join again, then fail `/healthz`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

use super::consumer::KafkaConsumer;
use crate::condition::{Action, Bounds, Condition, Observation, PartitionSeen, Remedy, decide};
use crate::config::AdminSpec;
use crate::dispatch::Dispatcher;
use crate::offsets::TopicPartition;
use crate::sync::lock;
use crate::telemetry::{ConditionChanged, RemediesExhausted, RemedyTried, Telemetry};

/// How often the group's lag is read while this member holds no partition.
const GROUP_LAG_EVERY: Duration = Duration::from_secs(10);

pub(crate) struct Watch {
    bounds: Bounds,
    topics: Vec<String>,
    started: Instant,
    next: Instant,
    remedy: Remedy,
    /// Per assigned partition: the committed offset last seen and when it last moved.
    progress: HashMap<TopicPartition, (Option<i64>, Instant)>,
    unassigned_since: Option<Instant>,
    group_lag: Option<(Instant, Option<i64>)>,
}

impl Watch {
    pub(crate) fn new(admin: &AdminSpec, topics: &[String], telemetry: &Telemetry) -> Watch {
        let ms = Duration::from_millis;
        // A consumer starts with no partition: `Unassigned` until the first assignment (never
        // `Healthy` without one). The gauge has a series per condition from the start, not
        // from the first change.
        telemetry
            .health
            .set_condition(Condition::Unassigned, Vec::new());
        telemetry.metrics.set_condition(Condition::Unassigned);
        Watch {
            bounds: Bounds {
                starved_after: ms(admin.starved_after_ms),
                stalled_after: ms(admin.stalled_after_ms),
                commits_failing_after: ms(admin.commits_failing_after_ms),
                rejoin_attempts: admin.rejoin_attempts,
            },
            topics: topics.to_vec(),
            started: Instant::now(),
            next: Instant::now() + Duration::from_secs(1),
            remedy: Remedy::default(),
            progress: HashMap::new(),
            unassigned_since: None,
            group_lag: None,
        }
    }

    /// One look, once a second.
    pub(crate) fn turn(
        &mut self,
        consumer: &KafkaConsumer,
        dispatcher: &Mutex<Dispatcher>,
        telemetry: &Telemetry,
    ) {
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next = now + Duration::from_secs(1);
        let (assigned, restoring) = {
            let d = lock(dispatcher);
            (d.partitions(), d.restoring())
        };
        let seen = self.observe(consumer, &assigned, &restoring, telemetry, now);
        let verdict = decide(&seen, &self.bounds);
        // What is published (`Health`) is the one record of the condition and since when.
        let (current, lasted, subjects) = telemetry.health.condition();
        if verdict.condition != current {
            telemetry.emit(ConditionChanged {
                from: current,
                lasted,
                to: verdict.condition,
                subjects: &verdict.subjects,
            });
        } else if subjects != verdict.subjects {
            telemetry
                .health
                .set_condition(verdict.condition, verdict.subjects.clone());
        }
        match self.remedy.next(now - self.started, &verdict, &self.bounds) {
            Action::None => {}
            Action::Rejoin { attempt } => {
                telemetry.emit(RemedyTried {
                    condition: verdict.condition,
                    attempt,
                    of: self.bounds.rejoin_attempts,
                });
                // Leaving revokes every partition (drained and committed as on any revoke);
                // joining again assigns them afresh, from their committed offsets.
                consumer.unsubscribe();
                let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
                if let Err(err) = consumer.subscribe(&topics) {
                    tracing::warn!("remedy: cannot subscribe again: {err}");
                }
                self.progress.clear();
                self.unassigned_since = None;
                self.group_lag = None;
            }
            Action::GiveUp => telemetry.emit(RemediesExhausted {
                condition: verdict.condition,
                attempts: self.bounds.rejoin_attempts,
            }),
        }
    }

    fn observe(
        &mut self,
        consumer: &KafkaConsumer,
        assigned: &[TopicPartition],
        restoring: &[TopicPartition],
        telemetry: &Telemetry,
        now: Instant,
    ) -> Observation {
        let health = &telemetry.health;
        self.progress.retain(|tp, _| assigned.contains(tp));
        let partitions = assigned
            .iter()
            .map(|tp| {
                let committed = health.committed_offset(tp);
                let entry = self.progress.entry(tp.clone()).or_insert((committed, now));
                if entry.0 != committed {
                    *entry = (committed, now);
                }
                // Lag: from the group's committed offset to the high watermark, as librdkafka
                // last reported them; unknown before the group's first commit (a group that
                // starts at `latest` has no lag to speak of).
                let lag = committed.and_then(|from| {
                    health
                        .broker_offsets(tp)
                        .filter(|b| b.high >= 0)
                        .map(|b| (b.high - from).max(0))
                });
                if lag == Some(0) || restoring.contains(tp) {
                    // Nothing to do is not a stall: the clock starts when work arrives (or its
                    // state is restored: the restore logs and exports its own progress).
                    entry.1 = now;
                }
                PartitionSeen {
                    tp: tp.clone(),
                    lag,
                    since_progress: now - entry.1,
                }
            })
            .collect::<Vec<_>>();
        let unassigned_for = if partitions.is_empty() {
            now - *self.unassigned_since.get_or_insert(now)
        } else {
            self.unassigned_since = None;
            self.group_lag = None;
            Duration::ZERO
        };
        let group_lag = if partitions.is_empty() {
            match self.group_lag {
                Some((at, lag)) if now - at < GROUP_LAG_EVERY => lag,
                _ => {
                    // A failed read (the coordinator not found yet) is tried again next second.
                    let lag = self.read_group_lag(consumer);
                    self.group_lag = lag.map(|l| (now, Some(l)));
                    lag
                }
            }
        } else {
            None
        };
        Observation {
            consuming: health.lifecycle() == crate::status::Lifecycle::Consuming,
            partitions,
            group_lag,
            unassigned_for,
            sinks_down: health.readiness().unreachable_sinks,
            access_denied: health.refusals().into_iter().map(|(s, _)| s).collect(),
            commits_failing_for: health.commits_failing_for(),
        }
    }

    /// The group's lag over every partition of its topics: committed offsets (OffsetFetch, for
    /// partitions held by anyone) against high watermarks. `None` when the broker does not say.
    fn read_group_lag(&self, consumer: &KafkaConsumer) -> Option<i64> {
        let timeout = Duration::from_secs(2);
        let mut tpl = TopicPartitionList::new();
        for topic in &self.topics {
            let metadata = consumer
                .fetch_metadata(Some(topic), timeout)
                .map_err(|e| tracing::debug!("group lag: metadata of {topic}: {e}"))
                .ok()?;
            for t in metadata.topics() {
                for p in t.partitions() {
                    tpl.add_partition(topic, p.id());
                }
            }
        }
        let committed = consumer
            .committed_offsets(tpl, timeout)
            .map_err(|e| tracing::debug!("group lag: committed offsets: {e}"))
            .ok()?;
        let mut lag = 0;
        for e in committed.elements() {
            let (low, high) = consumer
                .fetch_watermarks(e.topic(), e.partition(), timeout)
                .map_err(|err| tracing::debug!("group lag: watermarks: {err}"))
                .ok()?;
            let from = match e.offset() {
                Offset::Offset(o) if o >= 0 => o,
                _ => low,
            };
            lag += (high - from).max(0);
        }
        tracing::debug!(lag, "group lag read");
        Some(lag)
    }
}
