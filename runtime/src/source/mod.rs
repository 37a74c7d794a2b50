//! Sources: each turns its input into events on the one event path (`crate::pipeline`). [`file`]
//! reads a file or stdin (one partition, lines as offsets); [`kafka`] is a consumer group (its
//! client configuration, consumer, statistics, rebalances, dispatch and commits).

pub mod file;
pub mod kafka;
