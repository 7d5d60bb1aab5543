//! The in-process implementation of the bus and the registry (embedded default).

mod bus;
mod queues;
mod registry;

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub(crate) use bus::InProcessBus;
pub(crate) use registry::InProcessRegistry;

/// Sizes of the in-process bus. Zero values are treated as 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InProcessConfig {
    /// Capacity of each node's inbox, in deliveries. When it is full, `publish` waits. Default 4096.
    pub node_inbox_capacity: usize,
    /// Capacity of the application command queue. When it is full, `submit` waits. Default 4096.
    pub work_queue_capacity: usize,
    /// Number of workers consuming the command queue concurrently. Default 4.
    pub workers: usize,
    /// Bounds of the point-to-point queues.
    pub queues: crate::QueueLimits,
}

impl Default for InProcessConfig {
    fn default() -> Self {
        Self {
            node_inbox_capacity: 4096,
            work_queue_capacity: 4096,
            workers: 4,
            queues: crate::QueueLimits::default(),
        }
    }
}

// The tables' critical sections never panic half-way through an update, so a poisoned lock still
// guards consistent data: recover it instead of propagating the panic.

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}
