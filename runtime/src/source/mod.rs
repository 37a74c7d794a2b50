//! Sources turn input into batches of events. [`file`] reads local files or stdin; the Kafka
//! source (one bounded channel per assigned partition) follows the same batch shape.

pub mod file;
