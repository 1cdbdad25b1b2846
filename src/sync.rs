//! The one poison-tolerant lock of the crate (and of the tools built on it).
//!
//! A panic while a lock is held (caught at the FFI boundary, or in a test)
//! must not make every later call panic too: the data behind our locks stays
//! consistent between statements, so a poisoned lock is taken as it is.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking the data of a poisoned lock.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
