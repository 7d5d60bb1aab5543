//! The session registry API: which session of which user lives on which gateway node.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::BusError;
use crate::in_process::InProcessRegistry;
use crate::model::{NodeId, SessionEntry};

/// An implementation of the registry. Private so that implementations live in this crate.
#[async_trait]
pub(crate) trait RegistryBackend: Send + Sync + fmt::Debug + 'static {
    async fn register(&self, entry: SessionEntry) -> Result<(), BusError>;
    async fn unregister(&self, session: &str) -> Result<(), BusError>;
    async fn session(&self, session: &str) -> Result<Option<SessionEntry>, BusError>;
    async fn sessions_of(&self, user: &str) -> Result<Vec<SessionEntry>, BusError>;
    async fn nodes_of(&self, user: &str) -> Result<Vec<NodeId>, BusError>;
    async fn is_online(&self, user: &str) -> Result<bool, BusError>;
    async fn remove_node(&self, node: &NodeId) -> Result<usize, BusError>;
}

/// The session registry. Cheap to clone; all clones share one registry.
#[derive(Clone)]
pub struct Registry {
    backend: Arc<dyn RegistryBackend>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("backend", &self.backend)
            .finish()
    }
}

impl Registry {
    /// The in-process registry (a table in this process's memory).
    pub fn in_process() -> Registry {
        Registry {
            backend: Arc::new(InProcessRegistry::default()),
        }
    }

    /// Records a session (on CONNECT). Registering an existing session id replaces its entry.
    pub async fn register(&self, entry: SessionEntry) -> Result<(), BusError> {
        self.backend.register(entry).await
    }

    /// Forgets a session (on disconnect). Unknown ids are ignored.
    pub async fn unregister(&self, session: &str) -> Result<(), BusError> {
        self.backend.unregister(session).await
    }

    /// The entry of one session, if registered.
    pub async fn session(&self, session: &str) -> Result<Option<SessionEntry>, BusError> {
        self.backend.session(session).await
    }

    /// All sessions of `user`, in registration order.
    pub async fn sessions_of(&self, user: &str) -> Result<Vec<SessionEntry>, BusError> {
        self.backend.sessions_of(user).await
    }

    /// The distinct nodes holding sessions of `user`, in order of their first session.
    pub async fn nodes_of(&self, user: &str) -> Result<Vec<NodeId>, BusError> {
        self.backend.nodes_of(user).await
    }

    /// Whether `user` has at least one session.
    pub async fn is_online(&self, user: &str) -> Result<bool, BusError> {
        self.backend.is_online(user).await
    }

    /// Sweep: removes every session on `node` (the node went away); returns how many were removed.
    pub async fn remove_node(&self, node: &NodeId) -> Result<usize, BusError> {
        self.backend.remove_node(node).await
    }
}
