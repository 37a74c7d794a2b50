//! The pipeline's first fatal error, shared by the poll thread, the workers and the sinks. Once
//! set, nothing more is marked processed or acknowledged, and the pipeline stops with it.

use std::sync::{Arc, Mutex};

/// The first fatal error of a pipeline (cheap to clone: all clones share it).
#[derive(Debug, Clone, Default)]
pub struct Fatal(Arc<Mutex<Option<String>>>);

impl Fatal {
    /// Logs `message` and keeps it if it is the first.
    pub fn set(&self, message: String) {
        tracing::error!("{message}");
        self.lock().get_or_insert(message);
    }

    /// Whether a fatal error happened.
    pub fn is_set(&self) -> bool {
        self.lock().is_some()
    }

    /// The first fatal error, if any.
    pub fn get(&self) -> Option<String> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
