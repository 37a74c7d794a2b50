//! The local source: a file or stdin, one event per line, for local runs and tests.
//!
//! The file is one partition (partition 0) of a topic named by the spec (default: the file's
//! stem); an event's offset is its 0-based line number. With `format: json-lines` each line is
//! checked to be JSON before it reaches the plugin, and `key-field` / `timestamp-field` lift the
//! key and event time out of it. Blank (empty or whitespace-only) lines are skipped, counted
//! ([`Batch::blank`], the run's summary says how many) and still take an offset: line N is
//! offset N - 1 whatever comes before it.

use std::io::BufRead;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::config::{FileSourceSpec, LineFormat};

/// Why the source could not produce a batch.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The input file could not be opened or read.
    #[error("source {path}: {source}")]
    Io {
        /// The input.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A line that could not become an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecodable {
    /// 1-based line number.
    pub line: u64,
    /// What is wrong.
    pub message: String,
}

/// One decoded line.
#[derive(Debug, Clone)]
pub struct LineEvent {
    /// Offset (0-based line number).
    pub offset: i64,
    /// The payload, a range of [`Batch::data`].
    pub payload: Range<usize>,
    /// The key, if the spec names a key field and the line has it.
    pub key: Option<Vec<u8>>,
    /// Event time in ms, if the spec names a timestamp field and the line has it.
    pub timestamp_ms: Option<i64>,
}

/// Up to `batch-size` events, their bytes in one buffer.
#[derive(Debug, Default)]
pub struct Batch {
    /// All payload bytes of the batch.
    pub data: Vec<u8>,
    /// The events, in input order.
    pub events: Vec<LineEvent>,
    /// Lines that could not be decoded, in input order.
    pub undecodable: Vec<Undecodable>,
    /// Blank lines skipped.
    pub blank: u64,
}

impl Batch {
    /// The payload bytes of an event.
    pub fn payload(&self, event: &LineEvent) -> &[u8] {
        &self.data[event.payload.clone()]
    }
    /// True when the batch read nothing at all.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.undecodable.is_empty()
    }
}

/// Reads a file or stdin as batches of events.
pub struct FileSource {
    reader: Box<dyn BufRead + Send>,
    spec: FileSourceSpec,
    path: PathBuf,
    topic: String,
    next_offset: i64,
    line: Vec<u8>,
}

impl std::fmt::Debug for FileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSource")
            .field("path", &self.path)
            .field("topic", &self.topic)
            .finish()
    }
}

impl FileSource {
    /// Opens `path` (already resolved; `-` for stdin).
    pub fn open(spec: &FileSourceSpec, path: &Path) -> Result<Self, SourceError> {
        let reader: Box<dyn BufRead + Send> = if path == Path::new("-") {
            Box::new(std::io::BufReader::new(std::io::stdin()))
        } else {
            let file = std::fs::File::open(path).map_err(|source| SourceError::Io {
                path: path.into(),
                source,
            })?;
            Box::new(std::io::BufReader::with_capacity(1 << 16, file))
        };
        let topic = spec.topic.clone().unwrap_or_else(|| default_topic(path));
        Ok(FileSource {
            reader,
            spec: spec.clone(),
            path: path.into(),
            topic,
            next_offset: 0,
            line: Vec::new(),
        })
    }

    /// Reads `reader` as if it were the file `path` (for tests and the fuzz target).
    pub fn from_reader(
        spec: &FileSourceSpec,
        path: &Path,
        reader: Box<dyn BufRead + Send>,
    ) -> Self {
        FileSource {
            reader,
            spec: spec.clone(),
            path: path.into(),
            topic: spec.topic.clone().unwrap_or_else(|| default_topic(path)),
            next_offset: 0,
            line: Vec::new(),
        }
    }

    /// The topic name events carry.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Where the input comes from (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the next batch into `batch` (cleared first); an empty batch means end of input.
    pub fn next_batch(&mut self, batch: &mut Batch) -> Result<(), SourceError> {
        batch.data.clear();
        batch.events.clear();
        batch.undecodable.clear();
        batch.blank = 0;
        while batch.events.len() < self.spec.batch_size {
            self.line.clear();
            let read = self
                .reader
                .read_until(b'\n', &mut self.line)
                .map_err(|source| SourceError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            if read == 0 {
                break;
            }
            let offset = self.next_offset;
            self.next_offset += 1;
            let mut line = self.line.as_slice();
            while let Some((b'\n' | b'\r', rest)) = line.split_last() {
                line = rest;
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                batch.blank += 1;
                continue;
            }
            match self.decode(line) {
                Ok((key, timestamp_ms)) => {
                    let start = batch.data.len();
                    batch.data.extend_from_slice(line);
                    batch.events.push(LineEvent {
                        offset,
                        payload: start..batch.data.len(),
                        key,
                        timestamp_ms,
                    });
                }
                Err(message) => batch.undecodable.push(Undecodable {
                    line: offset as u64 + 1,
                    message,
                }),
            }
        }
        Ok(())
    }

    /// Checks a line and extracts key and timestamp.
    fn decode(&self, line: &[u8]) -> Result<(Option<Vec<u8>>, Option<i64>), String> {
        if self.spec.format == LineFormat::Lines {
            return Ok((None, None));
        }
        if self.spec.key_field.is_none() && self.spec.timestamp_field.is_none() {
            serde_json::from_slice::<serde::de::IgnoredAny>(line)
                .map_err(|e| format!("not valid JSON: {e}"))?;
            return Ok((None, None));
        }
        let value: serde_json::Value =
            serde_json::from_slice(line).map_err(|e| format!("not valid JSON: {e}"))?;
        let key = self
            .spec
            .key_field
            .as_deref()
            .and_then(|field| match value.get(field)? {
                serde_json::Value::String(s) => Some(s.as_bytes().to_vec()),
                serde_json::Value::Null => None,
                other => Some(other.to_string().into_bytes()),
            });
        let timestamp_ms = match self.spec.timestamp_field.as_deref() {
            Some(field) => match value.get(field) {
                None | Some(serde_json::Value::Null) => None,
                Some(v) => Some(v.as_i64().filter(|ts| *ts >= 0).ok_or_else(|| {
                    format!("`{field}` is {v}, not a timestamp in milliseconds since the epoch")
                })?),
            },
            None => None,
        };
        Ok((key, timestamp_ms))
    }
}

fn default_topic(path: &Path) -> String {
    if path == Path::new("-") {
        return "stdin".into();
    }
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "input".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(
        format: LineFormat,
        key: Option<&str>,
        ts: Option<&str>,
        batch_size: usize,
    ) -> FileSourceSpec {
        FileSourceSpec {
            path: "x".into(),
            format,
            topic: None,
            key_field: key.map(Into::into),
            timestamp_field: ts.map(Into::into),
            batch_size,
        }
    }

    fn source(text: &'static str, spec: FileSourceSpec) -> FileSource {
        let reader = Box::new(std::io::Cursor::new(text.as_bytes()));
        FileSource::from_reader(&spec, Path::new("mem.jsonl"), reader)
    }

    #[test]
    fn batches_lines_with_offsets_keys_and_timestamps() {
        let text = "{\"id\":\"a\",\"ts\":5}\n\n{\"id\":7,\"ts\":9}\r\nnot json\n{\"id\":null}\n";
        let mut src = source(text, spec(LineFormat::JsonLines, Some("id"), Some("ts"), 2));
        let mut batch = Batch::default();
        src.next_batch(&mut batch).unwrap();
        assert_eq!(batch.events.len(), 2);
        assert_eq!((batch.events[0].offset, batch.events[1].offset), (0, 2));
        assert_eq!(
            batch.blank, 1,
            "the blank line 2 is counted, and keeps its offset"
        );
        assert_eq!(batch.events[0].key.as_deref(), Some(&b"a"[..]));
        assert_eq!(batch.events[1].key.as_deref(), Some(&b"7"[..]));
        assert_eq!(batch.events[1].timestamp_ms, Some(9));
        assert_eq!(batch.payload(&batch.events[1]), b"{\"id\":7,\"ts\":9}");
        src.next_batch(&mut batch).unwrap();
        assert_eq!(batch.undecodable.len(), 1);
        assert_eq!(batch.undecodable[0].line, 4);
        assert!(batch.undecodable[0].message.starts_with("not valid JSON"));
        assert_eq!(batch.events.len(), 1);
        assert_eq!(batch.events[0].key, None);
        src.next_batch(&mut batch).unwrap();
        assert!(batch.is_empty());
    }

    #[test]
    fn bad_timestamp_is_undecodable_and_lines_format_passes_anything() {
        let mut src = source(
            "{\"ts\":\"noon\"}\n",
            spec(LineFormat::JsonLines, None, Some("ts"), 8),
        );
        let mut batch = Batch::default();
        src.next_batch(&mut batch).unwrap();
        assert!(
            batch.undecodable[0].message.contains("not a timestamp"),
            "{:?}",
            batch.undecodable
        );
        let mut src = source("plain text\n", spec(LineFormat::Lines, None, None, 8));
        src.next_batch(&mut batch).unwrap();
        assert_eq!(batch.payload(&batch.events[0]), b"plain text");
    }
}
