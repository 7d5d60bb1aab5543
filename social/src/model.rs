//! The JSON objects of the contract (social.md §2, realtime.md §2.6), with their exact keys.
//!
//! Note the deliberate inconsistencies the frontend depends on: `following` (not `isFollowing`) in
//! [`SimpleUser`], `isFollowed`/`isLiked`, `createdAt` on [`Post`] but `createAt` on [`Comment`], and
//! snake-case `create_at` on alarms. Nulls are serialised as `null`, never omitted.

use serde::Serialize;

use crate::media::Links;
use crate::time::serialize_micros;

/// A user in lists (`following` is the key the frontend reads).
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct SimpleUser {
    /// Login id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Profile image URL.
    #[serde(rename = "profileImage")]
    pub profile_image: Option<String>,
    /// Whether the caller follows this user (always false inside posts and alarms).
    pub following: bool,
}

/// `GET /api/user/me`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeUser {
    /// Login id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Bio.
    pub comment: Option<String>,
    /// How many users this user follows.
    pub follow_count: i64,
    /// How many users follow this user.
    pub follower_count: i64,
    /// Posts written.
    pub post_count: i64,
    /// Profile image URL.
    pub profile_image: Option<String>,
    /// `LOCAL` or `SOCIAL`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// `GET /api/user/details/info`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserDetails {
    /// Login id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Profile image URL.
    pub profile_image: Option<String>,
    /// Bio.
    pub comment: Option<String>,
    /// How many users this user follows.
    pub follow_count: i64,
    /// How many users follow this user.
    pub follower_count: i64,
    /// Posts written.
    pub post_count: i64,
    /// Whether the caller follows this user.
    #[serde(rename = "isFollowed")]
    pub is_followed: bool,
}

/// `GET /api/user/get/edit/info` and the body of `POST /api/user/edit/info`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EditUser {
    /// Display name.
    pub name: Option<String>,
    /// `male` / `female` (free text).
    pub sex: Option<String>,
    /// Bio.
    pub comment: Option<String>,
    /// Address.
    pub address: Option<String>,
    /// Address detail.
    pub address_detail: Option<String>,
}

/// A profile-grid tile.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostPrev {
    /// Post id (the grid's cursor).
    pub post_id: i64,
    /// Comments.
    pub comment_count: i64,
    /// Likes.
    pub favorite_count: i64,
    /// URL of the post's first image.
    pub profile_image: Option<String>,
}

/// A user tag on an image, in percent coordinates.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostTag {
    /// Tagged user.
    pub user_id: String,
    /// 0–100.
    pub x: f64,
    /// 0–100.
    pub y: f64,
}

/// One image of a post with its tags. `thumbnailUrl`, `blurhash`, `width` and `height` are additions
/// (the frontend ignores unknown keys).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageTags {
    /// Image URL.
    pub url: String,
    /// Thumbnail URL.
    pub thumbnail_url: Option<String>,
    /// Blurhash placeholder.
    pub blurhash: Option<String>,
    /// Pixels.
    pub width: Option<i64>,
    /// Pixels.
    pub height: Option<i64>,
    /// User tags.
    pub tags: Vec<PostTag>,
}

/// A comment (`createAt`, no "d").
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Comment {
    /// Comment id (the pagination cursor).
    pub id: i64,
    /// Post id.
    pub post_id: i64,
    /// Author id.
    pub user_id: String,
    /// Author name.
    pub name: String,
    /// Author image.
    pub profile_image: Option<String>,
    /// Text.
    pub content: String,
    /// Creation time.
    #[serde(serialize_with = "serialize_micros")]
    #[schema(value_type = String)]
    pub create_at: i64,
}

/// Alarm types stored in the `alarm` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmType {
    /// Someone followed the recipient.
    Follow,
    /// The recipient was tagged on a post image.
    PostTag,
    /// Someone commented on the recipient's post.
    PostCommentReceive,
    /// Someone liked the recipient's post.
    PostLikeReceive,
}

impl AlarmType {
    /// The stored and serialised name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Follow => "FOLLOW",
            Self::PostTag => "POST_TAG",
            Self::PostCommentReceive => "POST_COMMENT_RECEIVE",
            Self::PostLikeReceive => "POST_LIKE_RECEIVE",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "FOLLOW" => Self::Follow,
            "POST_TAG" => Self::PostTag,
            "POST_COMMENT_RECEIVE" => Self::PostCommentReceive,
            "POST_LIKE_RECEIVE" => Self::PostLikeReceive,
            _ => return None,
        })
    }
}

/// An alarm as listed by `GET /api/alarm/getList` and pushed to `/user/queue/notify` (same JSON).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(tag = "alarmType")]
pub enum Alarm {
    /// `FOLLOW`.
    #[serde(rename = "FOLLOW")]
    Follow {
        /// Time.
        #[serde(serialize_with = "serialize_micros")]
        #[schema(value_type = String)]
        create_at: i64,
        /// The follower.
        #[serde(rename = "senderId")]
        sender_id: String,
        /// The follower's image.
        #[serde(rename = "senderProfileImage")]
        sender_profile_image: Option<String>,
    },
    /// `POST_TAG` (sender = the post's author; the original's REST list showed the recipient).
    #[serde(rename = "POST_TAG")]
    PostTag {
        /// Time.
        #[serde(serialize_with = "serialize_micros")]
        #[schema(value_type = String)]
        create_at: i64,
        /// The post's author.
        #[serde(rename = "senderId")]
        sender_id: String,
        /// The author's image.
        #[serde(rename = "senderProfileImage")]
        sender_profile_image: Option<String>,
        /// The post.
        #[serde(rename = "postId")]
        post_id: i64,
    },
    /// `POST_LIKE_RECEIVE`.
    #[serde(rename = "POST_LIKE_RECEIVE")]
    PostLike {
        /// Time.
        #[serde(serialize_with = "serialize_micros")]
        #[schema(value_type = String)]
        create_at: i64,
        /// The liker.
        user: SimpleUser,
        /// The post.
        #[serde(rename = "postId")]
        post_id: i64,
    },
    /// `POST_COMMENT_RECEIVE`: `post` is the comment (the original's naming); `postId` added at the
    /// top level so the frontend's click works (contract §3.3).
    #[serde(rename = "POST_COMMENT_RECEIVE")]
    PostComment {
        /// Time.
        #[serde(serialize_with = "serialize_micros")]
        #[schema(value_type = String)]
        create_at: i64,
        /// The new comment.
        post: Comment,
        /// The commented post.
        #[serde(rename = "postId")]
        post_id: i64,
    },
}

/// A wire object whose media references (object keys as stored) become the URLs clients load
/// ([`Links::link`]). Every object leaving the service passes through it once, where it is built.
pub trait Linked: Sized {
    /// The object with its media references rendered by `links`.
    #[must_use]
    fn linked(self, links: &Links) -> Self;
}

/// [`Linked`] for objects whose one media reference is `profile_image`.
macro_rules! linked_profile_image {
    ($($t:ty),+) => {$(
        impl Linked for $t {
            fn linked(mut self, links: &Links) -> Self {
                self.profile_image = links.link_opt(self.profile_image.as_deref());
                self
            }
        }
    )+};
}

linked_profile_image!(SimpleUser, MeUser, UserDetails, PostPrev, Comment);

impl Linked for ImageTags {
    fn linked(mut self, links: &Links) -> Self {
        self.url = links.link(&self.url);
        self.thumbnail_url = links.link_opt(self.thumbnail_url.as_deref());
        self
    }
}

impl Linked for Alarm {
    fn linked(self, links: &Links) -> Self {
        match self {
            Alarm::Follow {
                create_at,
                sender_id,
                sender_profile_image,
            } => Alarm::Follow {
                create_at,
                sender_id,
                sender_profile_image: links.link_opt(sender_profile_image.as_deref()),
            },
            Alarm::PostTag {
                create_at,
                sender_id,
                sender_profile_image,
                post_id,
            } => Alarm::PostTag {
                create_at,
                sender_id,
                sender_profile_image: links.link_opt(sender_profile_image.as_deref()),
                post_id,
            },
            Alarm::PostLike {
                create_at,
                user,
                post_id,
            } => Alarm::PostLike {
                create_at,
                user: user.linked(links),
                post_id,
            },
            Alarm::PostComment {
                create_at,
                post,
                post_id,
            } => Alarm::PostComment {
                create_at,
                post: post.linked(links),
                post_id,
            },
        }
    }
}

impl<T: Linked> Linked for Vec<T> {
    fn linked(self, links: &Links) -> Self {
        self.into_iter().map(|x| x.linked(links)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_json_has_the_contract_keys() {
        let a = Alarm::Follow {
            create_at: 0,
            sender_id: "bob123".into(),
            sender_profile_image: Some(String::new()),
        };
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"alarmType":"FOLLOW","create_at":"1970-01-01T00:00:00","senderId":"bob123","senderProfileImage":""})
        );
        let like = Alarm::PostLike {
            create_at: 0,
            user: SimpleUser {
                id: "bob123".into(),
                name: "Bob".into(),
                profile_image: None,
                following: false,
            },
            post_id: 42,
        };
        let v = serde_json::to_value(&like).unwrap();
        assert_eq!(v["user"]["following"], false);
        assert_eq!(v["user"]["profileImage"], serde_json::Value::Null);
        assert_eq!(v["postId"], 42);
        assert_eq!(v["alarmType"], "POST_LIKE_RECEIVE");
    }
}
