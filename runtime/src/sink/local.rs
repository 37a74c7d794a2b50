//! Local outputs: stdout and files, one line per record, as raw values or JSON envelopes.

use std::io::Write;
use std::path::{Path, PathBuf};

use sluice_plugin_api::abi::Record;

use crate::config::RecordFormat;

/// A local output.
pub struct LocalOutput {
    writer: Box<dyn Write + Send>,
    format: RecordFormat,
    target: PathBuf,
}

impl std::fmt::Debug for LocalOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalOutput")
            .field("target", &self.target)
            .field("format", &self.format)
            .finish()
    }
}

impl LocalOutput {
    /// Standard output.
    pub fn stdout(format: RecordFormat) -> Self {
        LocalOutput {
            writer: Box::new(std::io::BufWriter::new(std::io::stdout())),
            format,
            target: "stdout".into(),
        }
    }

    /// A file, created (with its directory) or truncated.
    pub fn file(path: &Path, format: RecordFormat) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::File::create(path)?;
        Ok(LocalOutput {
            writer: Box::new(std::io::BufWriter::new(file)),
            format,
            target: path.into(),
        })
    }

    /// Where it writes.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Whether `err` (from [`LocalOutput::write`] or [`LocalOutput::flush`]) means the reader of
    /// stdout went away: a closed pipe, not a failure of the pipeline's.
    pub fn reader_gone(&self, err: &std::io::Error) -> bool {
        self.target == Path::new("stdout") && err.kind() == std::io::ErrorKind::BrokenPipe
    }

    /// Writes one record for output `name`.
    pub fn write(&mut self, name: &str, record: &Record<'_>) -> std::io::Result<()> {
        match self.format {
            RecordFormat::Value => {
                self.writer
                    .write_all(record.value_bytes().unwrap_or_default())?;
                self.writer.write_all(b"\n")
            }
            RecordFormat::Json => {
                let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
                let line = serde_json::json!({
                    "output": name,
                    "key": record.key_bytes().map(text),
                    "value": record.value_bytes().map(text),
                    "headers": record.header_list().iter()
                        .filter(|h| !crate::schema::is_decoding_header(h.key()))
                        .map(|h| (h.key().to_owned(), serde_json::Value::String(text(h.value()))))
                        .collect::<serde_json::Map<_, _>>(),
                    "partition": record.partition_hint(),
                });
                serde_json::to_writer(&mut self.writer, &line)?;
                self.writer.write_all(b"\n")
            }
        }
    }

    /// Flushes buffered lines.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }
}
