//! Errors of the bus, the registry and application handlers.

/// Why a bus or registry operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// No application handler is registered for this destination (in-process `submit`).
    #[error("no handler for destination {0}")]
    NoRoute(String),
    /// The bus (or this node's link) is shut down; the operation can never succeed.
    #[error("the bus is closed")]
    Closed,
    /// The bus or registry cannot serve the request now (broker or registry outage, no runtime); the
    /// operation may succeed later.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The topic name is not acceptable (empty, too long, starts with `/`, or contains `*` or `#`).
    #[error("invalid topic name {0:?}")]
    InvalidTopic(String),
    /// The queue name is not acceptable (empty, over 200 bytes, or outside `[A-Za-z0-9._-]`).
    #[error("invalid queue name {0:?}")]
    InvalidQueue(String),
    /// The queue holds its maximum of ready messages; the message was not accepted.
    #[error("queue {0} is full")]
    QueueFull(String),
    /// A node with this id is already attached to the bus.
    #[error("node {0} is already attached")]
    NodeInUse(String),
}

/// Why an application handler did not complete a command.
///
/// In-process, every error is logged and counted in [`BusMetrics::commands_failed`](crate::BusMetrics)
/// and the command is not retried.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// The command is invalid or not allowed (e.g. the sender is not a member); retrying cannot help.
    #[error("command rejected: {0}")]
    Rejected(String),
    /// A dependency failed (database, bus); the same command might succeed later.
    #[error("transient failure: {0}")]
    Transient(String),
    /// Any other error.
    #[error(transparent)]
    Other(#[from] Box<dyn std::error::Error + Send + Sync + 'static>),
}
