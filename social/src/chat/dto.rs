//! The chat JSON objects of the contract (realtime.md §2.4–§2.6, §4.2), with their exact keys.

use serde::Serialize;

use crate::media::Links;
use crate::store::chat::{AttachmentRow, MessageRow, SenderRow};
use crate::time::{format_micros, serialize_micros};

/// `chatroom_message.type` of a text message.
pub const TEXT: &str = "TEXT";
/// `chatroom_message.type` of an attachment message (IMAGE lives on the attachment rows only).
pub const FILE: &str = "FILE";
/// Attachment type of pictures (and the message type the clients see for them).
pub const IMAGE: &str = "IMAGE";
/// System message: someone was invited.
pub const INVITE: &str = "INVITE";
/// System message: someone left a group.
pub const LEAVE: &str = "LEAVE";

/// One attachment of a message: `{"fileName", "fileUrl"}`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentDto {
    /// The client's file name.
    pub file_name: String,
    /// Public URL.
    pub file_url: String,
}

/// A message as broadcast on `/topic/chat.{id}`, returned by the history and by the replay query
/// (`chatRoomId` with a capital R; nulls serialised).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatMessageDto {
    /// `TEXT`, `IMAGE`, `FILE`, `INVITE` or `LEAVE`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Room id.
    pub chat_room_id: i64,
    /// Message id.
    pub message_id: i64,
    /// Author.
    pub sender_id: String,
    /// Author's display name.
    pub sender_name: String,
    /// Author's image (`""` for system messages).
    pub sender_profile_image: Option<String>,
    /// Text (`null` for IMAGE/FILE).
    pub message: Option<String>,
    /// Zone-less local date-time, microsecond precision.
    pub create_at: String,
    /// `[{fileName, fileUrl}]` for IMAGE/FILE, else `null`.
    pub attachments: Option<Vec<AttachmentDto>>,
}

impl ChatMessageDto {
    /// Builds the DTO of a stored message. The one builder for broadcasts, history and replays, so
    /// all three carry the same JSON for the same message.
    pub fn build(
        media: &Links,
        row: &MessageRow,
        sender: Option<&SenderRow>,
        attachments: &[&AttachmentRow],
    ) -> ChatMessageDto {
        let system = row.kind == INVITE || row.kind == LEAVE;
        let (kind, attachments) = if row.kind == FILE {
            let kind = match attachments.first() {
                Some(a) if a.kind == IMAGE => IMAGE,
                _ => FILE,
            };
            let list = attachments
                .iter()
                .map(|a| AttachmentDto {
                    file_name: a.file_name.clone(),
                    file_url: media.link(&a.url),
                })
                .collect();
            (kind.to_owned(), Some(list))
        } else {
            (row.kind.clone(), None)
        };
        ChatMessageDto {
            kind,
            chat_room_id: row.chatroom_id,
            message_id: row.id,
            sender_id: row.sender_id.clone(),
            sender_name: sender.map(|s| s.name.clone()).unwrap_or_default(),
            sender_profile_image: if system {
                Some(String::new())
            } else {
                sender.and_then(|s| media.link_opt(s.profile_image.as_deref()))
            },
            message: row.message.clone(),
            create_at: format_micros(row.create_at),
            attachments,
        }
    }
}

/// `/topic/members.info.{id}` and the entries of `GET …/read_info`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReadInfoDto {
    /// Room id.
    pub chat_room_id: i64,
    /// Member.
    pub user_id: String,
    /// Last read message id (`null`: never read).
    pub last_read_message_id: Option<i64>,
}

/// The chat alarms pushed to `/user/queue/notify` (snake-case `create_at`).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "alarmType")]
pub enum ChatAlarm {
    /// A new TEXT/IMAGE/FILE message in one of the recipient's rooms.
    #[serde(rename = "CHAT")]
    Chat {
        /// Time.
        #[serde(serialize_with = "serialize_micros")]
        create_at: i64,
        /// Room id.
        #[serde(rename = "chatRoomId")]
        chat_room_id: i64,
        /// The text, or `사진 N장을 보냈습니다.` / `파일 N개를 보냈습니다.`.
        message: String,
    },
    /// A room appeared in the recipient's list (created, re-opened, or a DM came back).
    #[serde(rename = "CREATE_ROOM")]
    CreateRoom {
        /// Time.
        #[serde(serialize_with = "serialize_micros")]
        create_at: i64,
    },
    /// The recipient was invited to a group.
    #[serde(rename = "INVITE_ROOM")]
    InviteRoom {
        /// Time.
        #[serde(serialize_with = "serialize_micros")]
        create_at: i64,
    },
    /// The recipient left a room.
    #[serde(rename = "LEAVE_ROOM")]
    LeaveRoom {
        /// Time.
        #[serde(serialize_with = "serialize_micros")]
        create_at: i64,
    },
}

/// A room in `GET /api/chat/getList` (`chatroomId` with a lowercase r; `profileImages` is a string).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatRoomDto {
    /// Room id.
    pub chatroom_id: i64,
    /// Custom or automatic title.
    pub title: String,
    /// Preview of the last TEXT/IMAGE/FILE message.
    pub last_message: Option<String>,
    /// A JSON array of image URLs as a string, or the group image URL.
    pub profile_images: String,
    /// Unread messages, at most 99.
    pub unread_count: i64,
    /// `DIRECT` or `GROUP`.
    #[serde(rename = "type")]
    pub kind: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_json_has_the_contract_keys_in_order() {
        let row = MessageRow {
            id: 345,
            chatroom_id: 12,
            sender_id: "alice01".into(),
            message: Some("안녕".into()),
            create_at: 1_740_863_707_123_456,
            kind: TEXT.into(),
        };
        let sender = SenderRow {
            id: "alice01".into(),
            name: "Alice".into(),
            profile_image: Some("https://x/u1".into()),
        };
        let dto = ChatMessageDto::build(&Links::new(None, "/media"), &row, Some(&sender), &[]);
        assert_eq!(
            serde_json::to_string(&dto).ok().as_deref(),
            Some(
                "{\"type\":\"TEXT\",\"chatRoomId\":12,\"messageId\":345,\"senderId\":\"alice01\",\
                 \"senderName\":\"Alice\",\"senderProfileImage\":\"https://x/u1\",\"message\":\"안녕\",\
                 \"createAt\":\"2025-03-01T21:15:07.123456\",\"attachments\":null}"
            )
        );
    }

    #[test]
    fn alarm_json() {
        let a = ChatAlarm::Chat {
            create_at: 1_740_863_707_200_000,
            chat_room_id: 12,
            message: "안녕".into(),
        };
        assert_eq!(
            serde_json::to_string(&a).ok().as_deref(),
            Some(
                "{\"alarmType\":\"CHAT\",\"create_at\":\"2025-03-01T21:15:07.2\",\"chatRoomId\":12,\"message\":\"안녕\"}"
            )
        );
    }
}
