//! Committing offsets: a plain commit of complete units' offsets (the commit cycle and the
//! drains), and the transaction barrier (with `producer.transactional-id`): every worker flushes,
//! every record is delivered, then the offsets go into the transaction, which commits.

use std::sync::mpsc;
use std::time::Instant;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::dispatch::Dispatch;
use super::rebalance::RebalanceContext;
use crate::offsets::TopicPartition;
use crate::telemetry::{CommitPoint, OffsetsCommitted};
use crate::worker::Command;

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
    dispatch.telemetry.emit(OffsetsCommitted {
        commits: &commits,
        point: CommitPoint::Transaction,
        released: &[],
    });
    Ok(())
}

pub(crate) fn commit(
    consumer: &BaseConsumer<RebalanceContext>,
    commits: &[(TopicPartition, i64)],
) -> Result<(), String> {
    if commits.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for (TopicPartition { topic, partition }, offset) in commits {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .map_err(|e| e.to_string())?;
    }
    consumer
        .commit(&tpl, CommitMode::Sync)
        .map_err(|e| e.to_string())?;
    Ok(())
}
