//! The pipeline's first fatal error, shared by the poll thread, the workers and the sinks. Once
//! set, nothing more is marked processed or acknowledged, and the pipeline stops with it.

use std::sync::{Arc, Mutex};

/// The first fatal error of a pipeline (cheap to clone: all clones share it), and whether it
/// was only stdout's reader going away.
#[derive(Debug, Clone, Default)]
pub struct Fatal(Arc<Mutex<Option<(String, bool)>>>);

impl Fatal {
    /// Keeps `message` and logs it if it is the first. What fails after the first (every
    /// record of a refused batch, the refused emit after stdout's reader went away) is its
    /// consequence: logged at debug only.
    pub fn set(&self, message: String) {
        let mut first = self.lock();
        if first.is_some() {
            tracing::debug!("{message}");
            return;
        }
        tracing::error!("{message}");
        *first = Some((message, false));
    }

    /// Stops the pipeline because the reader of stdout went away (a closed pipe): not an error
    /// of the pipeline's, logged at info; offsets stay short of the first unwritten record.
    pub fn set_reader_gone(&self, message: String) {
        let mut first = self.lock();
        if first.is_none() {
            tracing::info!("{message}");
            *first = Some((message, true));
        }
    }

    /// Whether the first fatal error was stdout's reader going away.
    pub fn reader_gone(&self) -> bool {
        self.lock().as_ref().is_some_and(|(_, gone)| *gone)
    }

    /// Whether a fatal error happened.
    pub fn is_set(&self) -> bool {
        self.lock().is_some()
    }

    /// The first fatal error, if any.
    pub fn get(&self) -> Option<String> {
        self.lock().as_ref().map(|(message, _)| message.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(String, bool)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
