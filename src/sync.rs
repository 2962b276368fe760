//! The one way herald takes a std mutex.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking the data of a poisoned mutex as it is: what herald keeps behind a mutex (counts,
/// maps, queues of idle connections) stays usable after a panic elsewhere, and one panicked task must
/// not stop every other job.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
