//! The commit cycle: every `commit-interval-ms` the workers flush, without blocking the poll
//! loop, then the offsets of complete units are committed asynchronously and the broker's answer
//! settled; with `producer.transactional-id` the dispatcher's commit point instead (every worker
//! flushes, every record is delivered, the offsets go into the transaction, which commits).
//! Commits at a release are the dispatcher's (`Source::commit`).

use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use super::answers::{AnswerQueue, CommitAnswer};
use super::consumer::KafkaConsumer;
use crate::dispatch::Dispatcher;
use crate::offsets::TopicPartition;
use crate::sync::lock;
use crate::telemetry::{CommitFailed, CommitPoint, OffsetsCommitted};

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
        consumer: &KafkaConsumer,
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
    fn early(&mut self, now: Instant, dispatcher: &Mutex<Dispatcher>) -> bool {
        if now < self.last_round + FIRST_COMMIT_EVERY.min(self.every) {
            return false;
        }
        let awaits = {
            let d = lock(dispatcher);
            lock(d.tracker()).awaits_first_commit()
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
    pub(crate) fn turn(&mut self, consumer: &KafkaConsumer, dispatcher: &Mutex<Dispatcher>) {
        if self.transactional {
            if Instant::now() >= self.next {
                let d = lock(dispatcher);
                if let Err(err) = d.commit_point(consumer) {
                    d.failure().set(err);
                }
                self.next = Instant::now() + self.every;
            }
            return;
        }
        self.settle(dispatcher);
        let now = Instant::now();
        if self.round.is_none() && (now >= self.next || self.early(now, dispatcher)) {
            self.round = Some(lock(dispatcher).flush_round());
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
        let d = lock(dispatcher);
        let commits = lock(d.tracker()).take_commits();
        if commits.is_empty() {
            d.telemetry().emit(OffsetsCommitted {
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
    fn settle(&mut self, dispatcher: &Mutex<Dispatcher>) {
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
                lock(dispatcher).telemetry().emit(CommitFailed {
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
        let d = lock(dispatcher);
        match answer.error {
            None => {
                lock(d.tracker()).commit_confirmed(&sent.commits);
                d.telemetry().emit(OffsetsCommitted {
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
fn commit_failed(d: &Dispatcher, commits: &[(TopicPartition, i64)], error: &str) {
    d.telemetry().emit(CommitFailed {
        error,
        retried: true,
    });
    lock(d.tracker()).commit_failed(commits);
}

/// An interval commit on its way to the broker.
#[derive(Debug)]
struct SentCommit {
    commits: Vec<(TopicPartition, i64)>,
    at: Instant,
    /// Reported as failing for want of an answer.
    overdue: bool,
}
