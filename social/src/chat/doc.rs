//! Wire shapes of the chat REST routes for the OpenAPI document: the envelopes the handlers write
//! with `json!` and the multipart forms they read, described as types.

use utoipa::ToSchema;

/// `{"code":"SC","chatRoomId":N}`.
#[derive(Debug, ToSchema)]
#[allow(non_snake_case)]
pub struct RoomCreated {
    /// `SC`.
    #[schema(example = "SC")]
    pub code: String,
    /// The room (an existing direct room is re-opened).
    pub chatRoomId: i64,
}

/// `{"code":"SC","title":"…"}`.
#[derive(Debug, ToSchema)]
pub struct TitleSet {
    /// `SC`.
    #[schema(example = "SC")]
    pub code: String,
    /// The title now shown.
    pub title: Option<String>,
}

/// A group image upload: `chatRoomId` and one `file` part.
#[derive(Debug, ToSchema)]
#[allow(non_snake_case)]
pub struct GroupImageForm {
    /// The room.
    pub chatRoomId: i64,
    /// The image.
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
}

/// A chat upload: `chatRoomId` and up to 100 `files` (or `file`) parts.
#[derive(Debug, ToSchema)]
#[allow(non_snake_case)]
pub struct ChatFilesForm {
    /// The room.
    pub chatRoomId: i64,
    /// The files.
    #[schema(value_type = Vec<String>, format = Binary)]
    pub files: Vec<Vec<u8>>,
}
