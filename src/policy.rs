//! Who may subscribe to which topic, for `instar serve`: the configured public prefixes for any
//! authenticated session, and a chat room's topics (`chat.{id}`, `members.info.{id}`) only for the
//! room's current members, as the social service's store says at SUBSCRIBE time. The original let
//! anyone subscribe to any room.

use gateway::destination::{PrefixPolicy, TopicPolicy};

/// Public prefixes, plus room membership.
#[derive(Debug)]
pub(crate) struct RoomPolicy {
    public: PrefixPolicy,
    social: social::Ctx,
}

impl RoomPolicy {
    pub(crate) fn new(public: PrefixPolicy, social: social::Ctx) -> Self {
        Self { public, social }
    }
}

/// Whether a topic belongs to a chat room (and so is decided by membership).
fn is_room_topic(topic: &str) -> bool {
    topic.starts_with("chat.") || topic.starts_with("members.info.")
}

#[async_trait::async_trait]
impl TopicPolicy for RoomPolicy {
    async fn may_subscribe(&self, user: Option<&str>, topic: &str) -> bool {
        if is_room_topic(topic) {
            match user {
                Some(user) => self.social.may_subscribe_topic(user, topic).await,
                None => false,
            }
        } else {
            self.public.may_subscribe(user, topic).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_topics() {
        assert!(is_room_topic("chat.5"));
        assert!(is_room_topic("members.info.5"));
        assert!(!is_room_topic("public.bench"));
    }
}
