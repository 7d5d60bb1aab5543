//! The values that travel over the bus and live in the registry.

use std::sync::Arc;

use bytes::Bytes;

/// Identifies a gateway node (one gateway process). Cheap to clone.
pub type NodeId = Arc<str>;

/// What travels to the gateway nodes: the message as clients will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Destination as the client will see it in the `MESSAGE` frame, e.g. `"/topic/chat.5"` or
    /// `"/user/queue/notify"`.
    pub destination: String,
    /// MIME type of the body, if any (e.g. `"application/json"`).
    pub content_type: Option<String>,
    /// Extra headers to pass on to the client, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

impl Envelope {
    /// An envelope without content type or extra headers.
    pub fn new(destination: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Self {
            destination: destination.into(),
            content_type: None,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// Sets the content type.
    #[must_use]
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// Appends an extra header.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Where a published message goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// Every node bound to this topic. The topic name is given without `"/topic/"`, e.g. `"chat.5"`.
    Topic(String),
    /// Every node holding a session of `user`; `queue` names the user queue, e.g. `"notify"` for
    /// `/user/queue/notify`.
    User {
        /// The principal (user name) as the registry knows it.
        user: String,
        /// The user queue name without `"/user/queue/"`, e.g. `"notify"`.
        queue: String,
    },
}

impl Target {
    /// `Target::Topic(name)`.
    pub fn topic(name: impl Into<String>) -> Self {
        Self::Topic(name.into())
    }

    /// `Target::User { user, queue }`.
    pub fn user(user: impl Into<String>, queue: impl Into<String>) -> Self {
        Self::User {
            user: user.into(),
            queue: queue.into(),
        }
    }
}

/// What a node's inbox yields. The envelope is shared between all nodes (in-process) so that the local
/// fan-out can encode it once.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The target the message was published to.
    pub target: Target,
    /// The message.
    pub envelope: Arc<Envelope>,
}

/// [`AppCommand`] header with the key a gateway gives every command it submits: a random
/// per-session prefix and a counter, unique across the deployment. The bus delivers commands at
/// least once; handlers use the key to recognise a redelivered command. Gateways drop a client's
/// own header of this name.
pub const COMMAND_KEY_HEADER: &str = "x-instar-command-key";

/// [`AppCommand`] header with the command's **order key**, set by the gateway (chat: the room id
/// from the body, see the gateway's `command_order_field`). The RabbitMQ bus puts every command of
/// one key on one shard, so one process at a time handles a room's commands and its broadcasts
/// leave in the order of their message ids; a command without it is placed by its session.
/// Gateways drop a client's own header of this name.
pub const ORDER_KEY_HEADER: &str = "x-instar-order-key";

/// An application command: a client `SEND` to `/app/**`, with the principal stamped by the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppCommand {
    /// The destination the client sent to, e.g. `"/app/send"`.
    pub destination: String,
    /// The authenticated principal (user name) of the sending session.
    pub principal: String,
    /// The sending session's id.
    pub session: String,
    /// The gateway node holding the sending session.
    pub node: NodeId,
    /// The frame's headers the gateway chose to pass on.
    pub headers: Vec<(String, String)>,
    /// The frame's body.
    pub body: Bytes,
}

impl AppCommand {
    /// What places the command on a shard: its [`ORDER_KEY_HEADER`] when it has a non-empty one,
    /// else its session. Commands of one key are handled by one process at a time, in the order
    /// each session sent them.
    pub fn order_key(&self) -> &str {
        self.headers
            .iter()
            .find(|(k, v)| k == ORDER_KEY_HEADER && !v.is_empty())
            .map_or(self.session.as_str(), |(_, v)| v.as_str())
    }
}

/// One session in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEntry {
    /// The session id (unique across the deployment).
    pub session: String,
    /// The session's principal.
    pub user: String,
    /// The gateway node holding the session.
    pub node: NodeId,
    /// When the session connected, milliseconds since the Unix epoch.
    pub connected_at_ms: u64,
}
