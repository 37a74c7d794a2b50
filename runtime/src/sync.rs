//! Locking as the runtime does it everywhere: a poisoned lock's data is taken as it is (a thread
//! that panicked holding it has already stopped the run, and the stop still needs the data).

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking the data of a poisoned lock as it is.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
