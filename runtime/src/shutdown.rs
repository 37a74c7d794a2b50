//! SIGTERM / SIGINT: the first asks for a graceful stop (stop fetching, drain, flush, commit,
//! leave the group); a second one exits at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the first signal.
#[derive(Debug, Clone)]
pub struct Shutdown {
    requested: Arc<AtomicBool>,
}

impl Shutdown {
    /// Installs the handlers: the first SIGTERM/SIGINT sets the flag, the second exits with 130.
    pub fn install() -> std::io::Result<Self> {
        let requested = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            // Registered first, so it sees the flag before this signal's own handler sets it.
            signal_hook::flag::register_conditional_shutdown(signal, 130, requested.clone())?;
            signal_hook::flag::register(signal, requested.clone())?;
        }
        Ok(Shutdown { requested })
    }

    /// A flag no signal sets (tests, embedding).
    pub fn manual() -> Self {
        Shutdown {
            requested: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Has a stop been asked for?
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Asks for a stop.
    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
    }
}
