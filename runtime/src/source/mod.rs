//! Sources: thin adapters that feed the dispatcher (`crate::dispatch`) and do for it what only
//! they can (pause, resume, commit). [`file`] reads a file or stdin (one partition, lines as
//! offsets, a no-op commit); [`kafka`] is a consumer group (its poll loop, rebalance callbacks,
//! commit cycle and watch). Neither imports the other.

pub mod file;
pub mod kafka;
