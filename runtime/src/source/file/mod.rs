//! The file source: `reader` turns a file (or stdin) into batches of events, one per line;
//! `run` is its loop on the one event path.

mod reader;
pub mod run;

pub use reader::*;
