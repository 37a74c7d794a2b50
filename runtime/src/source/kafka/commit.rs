//! Committing offsets: the commit cycle (every `commit-interval-ms` the workers flush, without
//! blocking the poll loop, then the offsets of complete units are committed), the transaction
//! barrier (with `producer.transactional-id`: every worker flushes, every record is delivered,
//! then the offsets go into the transaction, which commits), and the drain at the stop.

use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::answers::{AnswerQueue, CommitAnswer};
use super::dispatch::Dispatch;
use super::rebalance::{RebalanceContext, revoke};
use crate::offsets::TopicPartition;
use crate::pool::WorkerPool;
use crate::telemetry::{CommitFailed, CommitPoint, Draining, OffsetsCommitted, StopReason};
use crate::worker::Command;

/// When an interval commit with no answer is taken as failed (see [`CommitCycle::settle`]).
const UNANSWERED: Duration = Duration::from_secs(90);

/// How often rounds run while a partition awaits its first commit (see [`CommitCycle::turn`]).
const FIRST_COMMIT_EVERY: Duration = Duration::from_millis(100);

/// The commit cycle, turned by the poll loop.
#[derive(Debug)]
pub(crate) struct CommitCycle {
    every: Duration,
    next: Instant,
    transactional: bool,
    /// The workers' answers to the flush requests of the current round.
    round: Option<Vec<mpsc::Receiver<()>>>,
    /// When the last round ended.
    last_round: Instant,
    /// The interval commit sent and not yet answered (one at a time: the next one carries
    /// everything complete by then).
    sent: Option<SentCommit>,
    /// Where the broker's answers to interval commits arrive.
    answers: Option<AnswerQueue>,
    /// Until when rounds may run early: one interval from the moment a partition was seen
    /// awaiting its first commit.
    early_until: Option<Instant>,
}

impl CommitCycle {
    /// The cycle of `consumer`. [`CommitCycle::close`] it before the consumer is dropped.
    pub(crate) fn new(
        consumer: &BaseConsumer<RebalanceContext>,
        every: Duration,
        transactional: bool,
    ) -> CommitCycle {
        CommitCycle {
            answers: (!transactional).then(|| AnswerQueue::new(consumer)),
            every,
            next: Instant::now() + every,
            transactional,
            round: None,
            last_round: Instant::now(),
            early_until: None,
            sent: None,
        }
    }

    /// Whether a round should start before the interval is up: a partition assigned by a
    /// (re)start or a rebalance has work but no commit yet. Units become complete only in a
    /// round (the plugin's flush), so waiting for the interval would delay the first commit by
    /// up to two intervals, and a pod restarted again within that time (kill -9s under load)
    /// would never make progress. Early rounds run every 100 ms, for at most one interval.
    fn early(&mut self, now: Instant, dispatch: &Mutex<Dispatch>) -> bool {
        if now < self.last_round + FIRST_COMMIT_EVERY.min(self.every) {
            return false;
        }
        let awaits = {
            let d = dispatch.lock().unwrap_or_else(|e| e.into_inner());
            let tracker = d.tracker.lock().unwrap_or_else(|e| e.into_inner());
            tracker.awaits_first_commit()
        };
        if !awaits {
            self.early_until = None;
            return false;
        }
        now < *self.early_until.get_or_insert(now + self.every)
    }

    /// Lets go of the answer queue: librdkafka requires every queue destroyed before its client.
    pub(crate) fn close(&mut self) {
        self.answers = None;
    }

    /// No flush round is waiting for the workers (so the pool may be resized).
    pub(crate) fn idle(&self) -> bool {
        self.round.is_none()
    }

    /// One turn: with transactions, a blocking commit point once the interval is up; otherwise
    /// a flush round is started once the interval is up (or early, see `early`), and when every
    /// worker has answered, the offsets of complete units are committed (a failed commit is
    /// retried next interval).
    pub(crate) fn turn(
        &mut self,
        consumer: &BaseConsumer<RebalanceContext>,
        dispatch: &Mutex<Dispatch>,
        pool: &Mutex<WorkerPool>,
    ) {
        if self.transactional {
            if Instant::now() >= self.next {
                let d = dispatch.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(err) = commit_transaction(&d, consumer) {
                    d.failure.set(err);
                }
                self.next = Instant::now() + self.every;
            }
            return;
        }
        self.settle(dispatch);
        let now = Instant::now();
        if self.round.is_none() && (now >= self.next || self.early(now, dispatch)) {
            self.round = Some(pool.lock().unwrap_or_else(|e| e.into_inner()).flush_round());
        }
        let Some(round) = &self.round else { return };
        if round
            .iter()
            .any(|rx| matches!(rx.try_recv(), Err(mpsc::TryRecvError::Empty)))
        {
            return;
        }
        self.round = None;
        self.last_round = Instant::now();
        self.next = self.last_round + self.every;
        if self.sent.is_some() {
            return;
        }
        let d = dispatch.lock().unwrap_or_else(|e| e.into_inner());
        let commits = d
            .tracker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_commits();
        if commits.is_empty() {
            d.telemetry.emit(OffsetsCommitted {
                commits: &commits,
                point: CommitPoint::Interval,
                released: &[],
            });
            return;
        }
        // Asynchronous: a broker that stops answering must not stop the poll loop (and with it
        // the watchdog that would say so). The answer comes through `settle`.
        let sent = match &self.answers {
            Some(queue) => queue.commit(consumer, &commits),
            None => Err("the commit queue is closed".to_owned()),
        };
        match sent {
            Ok(()) => {
                self.sent = Some(SentCommit {
                    commits,
                    at: Instant::now(),
                    overdue: false,
                });
            }
            Err(err) => commit_failed(&d, &commits, &err),
        }
    }

    /// Takes the broker's answer to the interval commit sent, if it came, and settles it:
    /// confirmed, or handed out again. One unanswered for longer than an interval and 5 s counts
    /// as failing (`CommitsFailing`) until it is answered.
    fn settle(&mut self, dispatch: &Mutex<Dispatch>) {
        let Some(sent) = &mut self.sent else { return };
        let answer = self
            .answers
            .as_ref()
            .and_then(AnswerQueue::next)
            .or_else(|| {
                // librdkafka answers within `socket.timeout.ms` (60 s by default): one never
                // answered is taken as failed, so commits go on.
                (sent.at.elapsed() > UNANSWERED).then(|| CommitAnswer {
                    error: Some(format!(
                        "no answer from the broker in {} s",
                        UNANSWERED.as_secs()
                    )),
                })
            });
        let Some(answer) = answer else {
            if !sent.overdue && sent.at.elapsed() > self.every.max(Duration::from_secs(5)) {
                sent.overdue = true;
                let d = dispatch.lock().unwrap_or_else(|e| e.into_inner());
                d.telemetry.emit(CommitFailed {
                    error: &format!(
                        "no answer from the broker after {:.0} s",
                        sent.at.elapsed().as_secs_f64()
                    ),
                    retried: false,
                });
            }
            return;
        };
        let Some(sent) = self.sent.take() else { return };
        let d = dispatch.lock().unwrap_or_else(|e| e.into_inner());
        match answer.error {
            None => {
                d.tracker
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .commit_confirmed(&sent.commits);
                d.telemetry.emit(OffsetsCommitted {
                    commits: &sent.commits,
                    point: CommitPoint::Interval,
                    released: &[],
                });
            }
            Some(err) => commit_failed(&d, &sent.commits, &err),
        }
    }
}

/// An interval commit failed: reported, and its offsets handed out again at the next interval.
fn commit_failed(d: &Dispatch, commits: &[(TopicPartition, i64)], error: &str) {
    d.telemetry.emit(CommitFailed {
        error,
        retried: true,
    });
    d.tracker
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .commit_failed(commits);
}

/// An interval commit on its way to the broker.
#[derive(Debug)]
struct SentCommit {
    commits: Vec<(TopicPartition, i64)>,
    at: Instant,
    /// Reported as failing for want of an answer.
    overdue: bool,
}

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

/// The stop: every partition is drained, flushed, acknowledged and committed (as on revoke),
/// then the workers' inboxes are dropped. The caller then leaves the group.
pub(crate) fn drain(
    consumer: &BaseConsumer<RebalanceContext>,
    dispatch: &Mutex<Dispatch>,
    reason: StopReason,
) {
    let mut d = dispatch.lock().unwrap_or_else(|e| e.into_inner());
    let mut all: Vec<TopicPartition> = d.slots.keys().cloned().collect();
    all.sort();
    d.telemetry.emit(Draining {
        reason,
        partitions: &all,
    });
    revoke(&mut d, consumer, &all);
}

/// Transactions: a commit point. Every worker finishes what is queued and flushes, every record
/// is delivered, so every dispatched event is complete; then the offsets after them go into the
/// transaction, which commits. The poll loop waits meanwhile (bounded by the drain timeout).
/// After a fatal error the transaction is aborted instead.
pub(crate) fn commit_transaction(
    dispatch: &Dispatch,
    consumer: &BaseConsumer<RebalanceContext>,
) -> Result<(), String> {
    let Some(sink) = &dispatch.transactions else {
        return Ok(());
    };
    let timeout = dispatch.drain_timeout;
    let deadline = Instant::now() + timeout;
    let failed = || dispatch.failure.is_set();
    let replies: Vec<_> = dispatch
        .workers
        .iter()
        .map(|w| {
            let (tx, rx) = mpsc::sync_channel(1);
            let _ = w.send(Command::Barrier(tx));
            rx
        })
        .collect();
    for rx in replies {
        if rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_err()
        {
            let _ = sink.abort_transaction(timeout);
            return Err(
                "workers did not finish within the drain timeout: transaction aborted".into(),
            );
        }
    }
    if failed()
        || sink
            .flush(deadline.saturating_duration_since(Instant::now()))
            .is_err()
    {
        let _ = sink.abort_transaction(timeout);
        return Err("not every record was delivered: transaction aborted".into());
    }
    let mut tracker = dispatch.tracker.lock().unwrap_or_else(|e| e.into_inner());
    if tracker.total_in_flight() > 0 {
        drop(tracker);
        let _ = sink.abort_transaction(timeout);
        return Err("events still incomplete at the commit point: transaction aborted".into());
    }
    let commits = tracker.take_commits();
    drop(tracker);
    let mut tpl = TopicPartitionList::new();
    for (TopicPartition { topic, partition }, offset) in &commits {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .map_err(|e| e.to_string())?;
    }
    let group = consumer
        .group_metadata()
        .ok_or("no consumer group metadata for the transaction")?;
    sink.commit_transaction(&tpl, &group, timeout)
        .map_err(|e| format!("transaction commit failed: {e}"))?;
    dispatch
        .tracker
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .commit_confirmed(&commits);
    dispatch.telemetry.emit(OffsetsCommitted {
        commits: &commits,
        point: CommitPoint::Transaction,
        released: &[],
    });
    Ok(())
}

/// Commits synchronously (revokes and the stop: the partitions must be settled before they go).
pub(crate) fn commit(
    consumer: &BaseConsumer<RebalanceContext>,
    commits: &[(TopicPartition, i64)],
) -> Result<(), String> {
    if commits.is_empty() {
        return Ok(());
    }
    let tpl = tpl_of_commits(commits)?;
    consumer
        .commit(&tpl, CommitMode::Sync)
        .map_err(|e| e.to_string())?;
    Ok(())
}
