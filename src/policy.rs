//! Who may subscribe to which topic, for `instar serve` and for `instar gateway` nodes given the
//! database: the configured public prefixes for any authenticated session, and a chat room's topics
//! (`chat.{id}`, `members.info.{id}`) only for the room's current members, as the store says at
//! SUBSCRIBE time. The original let anyone subscribe to any room. The same adapter serves
//! missed-message replay (`x-instar-last-message-id`) from the store.

use bytes::Bytes;
use gateway::destination::{PrefixPolicy, TopicPolicy};
use gateway::replay::{ReplayError, Replayed};
use social::chat::Rooms;

/// Public prefixes, plus room membership.
#[derive(Debug)]
pub(crate) struct RoomPolicy {
    public: PrefixPolicy,
    rooms: Rooms,
}

impl RoomPolicy {
    pub(crate) fn new(public: PrefixPolicy, rooms: Rooms) -> Self {
        Self { public, rooms }
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
                Some(user) => self.rooms.may_subscribe_topic(user, topic).await,
                None => false,
            }
        } else {
            self.public.may_subscribe(user, topic).await
        }
    }

    fn rechecks(&self, topic: &str) -> bool {
        is_room_topic(topic)
    }

    async fn token_version(&self, user: &str) -> Result<Option<u64>, String> {
        self.rooms
            .token_version(user)
            .await
            .map(Some)
            .map_err(|e| e.to_string())
    }

    fn owns(&self, topic: &str) -> bool {
        is_room_topic(topic)
    }

    async fn replay(
        &self,
        user: &str,
        topic: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Replayed>, ReplayError> {
        let Some(room) = Rooms::chat_topic_room(topic) else {
            return Err(ReplayError::Unsupported);
        };
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        match self.rooms.messages_after(user, room, after, limit).await {
            Ok(rows) => Ok(rows
                .into_iter()
                .filter_map(|(id, json)| {
                    Some(Replayed {
                        id: u64::try_from(id).ok()?,
                        content_type: Some("application/json".into()),
                        body: Bytes::from(json),
                    })
                })
                .collect()),
            Err(social::chat::ReplayError::NotMember) => Err(ReplayError::Forbidden),
            Err(e) => {
                tracing::error!(%user, %topic, error = %e, "replay failed");
                Err(ReplayError::Unavailable)
            }
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

    #[test]
    fn control_vocabulary_matches_the_chat_service() {
        // Defined on both sides of the bus (the gateway cannot depend on social): they must agree.
        assert_eq!(social::chat::CONTROL_QUEUE, gateway::hub::CONTROL_QUEUE);
        assert_eq!(social::chat::CONTROL_HEADER, gateway::hub::CONTROL_HEADER);
        assert_eq!(
            social::chat::CONTROL_TOPIC_HEADER,
            gateway::hub::CONTROL_TOPIC_HEADER
        );
        assert_eq!(social::chat::MESSAGE_ID_HEADER, gateway::replay::ID_HEADER);
        assert_eq!(
            social::revocation::TOKENS_TOPIC,
            gateway::revocation::TOKENS_TOPIC
        );
        assert_eq!(
            social::revocation::USER_HEADER,
            gateway::revocation::USER_HEADER
        );
        assert_eq!(
            social::revocation::VERSION_HEADER,
            gateway::revocation::VERSION_HEADER
        );
    }
}
