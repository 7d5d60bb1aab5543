//! The in-process session registry.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::lock;
use crate::bus::Health;
use crate::error::BusError;
use crate::model::{NodeId, SessionEntry};
use crate::registry::{NodeLease, RegistryBackend};

#[derive(Debug, Default)]
pub(crate) struct InProcessRegistry {
    tables: Mutex<Tables>,
    /// Command workers and when their heartbeat expires.
    workers: Mutex<HashMap<String, Instant>>,
    /// Resume marks: (user, topic) -> (last delivered id, expiry).
    resume: Mutex<HashMap<(String, String), (u64, Instant)>>,
}

/// Most resume marks the in-process registry keeps; past it expired ones are purged and, if still
/// full, the new mark is not kept (the user then resumes from the history, as without marks).
pub(crate) const MAX_RESUME_MARKS: usize = 100_000;

#[derive(Debug, Default)]
struct Tables {
    sessions: HashMap<String, SessionEntry>,
    /// user -> session ids, in registration order (a user has few sessions).
    by_user: HashMap<String, Vec<String>>,
    /// node -> session ids.
    by_node: HashMap<NodeId, HashSet<String>>,
}

impl Tables {
    fn remove(&mut self, session: &str) -> Option<SessionEntry> {
        let entry = self.sessions.remove(session)?;
        if let Some(ids) = self.by_user.get_mut(&entry.user) {
            ids.retain(|id| id != session);
            if ids.is_empty() {
                self.by_user.remove(&entry.user);
            }
        }
        if let Some(ids) = self.by_node.get_mut(&entry.node) {
            ids.remove(session);
            if ids.is_empty() {
                self.by_node.remove(&entry.node);
            }
        }
        Some(entry)
    }

    fn sessions_of(&self, user: &str) -> impl Iterator<Item = &SessionEntry> {
        self.by_user
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|id| self.sessions.get(id))
    }
}

#[async_trait]
impl RegistryBackend for InProcessRegistry {
    async fn register(&self, entry: SessionEntry) -> Result<(), BusError> {
        let mut tables = lock(&self.tables);
        tables.remove(&entry.session);
        tables
            .by_user
            .entry(entry.user.clone())
            .or_default()
            .push(entry.session.clone());
        tables
            .by_node
            .entry(entry.node.clone())
            .or_default()
            .insert(entry.session.clone());
        tables.sessions.insert(entry.session.clone(), entry);
        Ok(())
    }

    async fn unregister(&self, session: &str) -> Result<(), BusError> {
        lock(&self.tables).remove(session);
        Ok(())
    }

    async fn session(&self, session: &str) -> Result<Option<SessionEntry>, BusError> {
        Ok(lock(&self.tables).sessions.get(session).cloned())
    }

    async fn sessions_of(&self, user: &str) -> Result<Vec<SessionEntry>, BusError> {
        Ok(lock(&self.tables).sessions_of(user).cloned().collect())
    }

    async fn nodes_of(&self, user: &str) -> Result<Vec<NodeId>, BusError> {
        let tables = lock(&self.tables);
        let mut nodes: Vec<NodeId> = Vec::new();
        for entry in tables.sessions_of(user) {
            if !nodes.contains(&entry.node) {
                nodes.push(entry.node.clone());
            }
        }
        Ok(nodes)
    }

    async fn is_online(&self, user: &str) -> Result<bool, BusError> {
        Ok(lock(&self.tables).by_user.contains_key(user))
    }

    async fn remove_node(&self, node: &NodeId) -> Result<usize, BusError> {
        let mut tables = lock(&self.tables);
        let Some(ids) = tables.by_node.get(node).cloned() else {
            return Ok(0);
        };
        let removed = ids.iter().filter(|id| tables.remove(id).is_some()).count();
        Ok(removed)
    }

    async fn hold_lease(&self, node: &NodeId) -> Result<NodeLease, BusError> {
        Ok(NodeLease::new(node.clone(), None))
    }

    async fn live_nodes(&self) -> Result<Vec<NodeId>, BusError> {
        let mut nodes: Vec<NodeId> = lock(&self.tables).by_node.keys().cloned().collect();
        nodes.sort();
        Ok(nodes)
    }

    async fn sweep(&self) -> Result<usize, BusError> {
        Ok(0)
    }

    async fn worker_heartbeat(&self, worker: &str, ttl: Duration) -> Result<Vec<String>, BusError> {
        let now = Instant::now();
        let mut workers = lock(&self.workers);
        workers.insert(worker.to_owned(), now + ttl);
        workers.retain(|_, until| *until > now);
        let mut live: Vec<String> = workers.keys().cloned().collect();
        live.sort();
        Ok(live)
    }

    async fn worker_leave(&self, worker: &str) -> Result<(), BusError> {
        lock(&self.workers).remove(worker);
        Ok(())
    }

    fn health(&self) -> Health {
        Health::Up
    }

    async fn save_resume(
        &self,
        user: &str,
        marks: &[(String, u64)],
        ttl: Duration,
    ) -> Result<(), BusError> {
        let now = Instant::now();
        let mut table = lock(&self.resume);
        if table.len() + marks.len() > MAX_RESUME_MARKS {
            table.retain(|_, (_, until)| *until > now);
        }
        for (topic, id) in marks {
            let key = (user.to_owned(), topic.clone());
            let full = table.len() >= MAX_RESUME_MARKS;
            match table.get_mut(&key) {
                Some((old, until)) if *until > now && *old >= *id => {}
                Some(slot) => *slot = (*id, now + ttl),
                None if !full => {
                    table.insert(key, (*id, now + ttl));
                }
                None => {}
            }
        }
        Ok(())
    }

    async fn take_resume(&self, user: &str, topic: &str) -> Result<Option<u64>, BusError> {
        let key = (user.to_owned(), topic.to_owned());
        Ok(lock(&self.resume)
            .remove(&key)
            .and_then(|(id, until)| (until > Instant::now()).then_some(id)))
    }
}
