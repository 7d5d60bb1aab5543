//! Wire shapes of the post and feed routes for the OpenAPI document: the bodies the handlers read
//! from loose JSON and the objects they write by hand ([`super::view`]), described as types.

use utoipa::ToSchema;

use crate::model::{ImageTags, SimpleUser};

/// A post as the feed and the detail view show it (written by hand in [`super::view::Post`]).
#[derive(Debug, ToSchema)]
#[schema(as = Post)]
#[allow(non_snake_case)]
pub struct PostDoc {
    /// Post id.
    pub postId: i64,
    /// The author (`following` always false).
    pub user: SimpleUser,
    /// Caption.
    pub comment: String,
    /// Place.
    pub location: Option<String>,
    /// Likes.
    pub favoriteCount: i64,
    /// Comments.
    pub commentCount: i64,
    /// Creation time (`yyyy-MM-ddTHH:mm:ss.SSSSSS`).
    pub createdAt: String,
    /// Images in upload order, with their user tags.
    pub imageTags: Vec<ImageTags>,
    /// The post's hashtags as stored (each its last noun, contract §6.3), by name (an addition).
    pub hashtags: Vec<String>,
    /// The first image's labels (at most 5, as nouns, §6.2), by name; empty until the image is
    /// labelled, or when labelling is off (an addition).
    pub aiTags: Vec<String>,
    /// Whether the caller likes the post.
    pub isLiked: bool,
}

/// `{"code":"SC","post":Post}`.
#[derive(Debug, ToSchema)]
pub struct PostDetails {
    /// `SC`.
    #[schema(example = "SC")]
    pub code: String,
    /// The post.
    pub post: PostDoc,
}

/// `{"code":"SC","postId":N}`.
#[derive(Debug, ToSchema)]
#[allow(non_snake_case)]
pub struct Created {
    /// `SC`.
    #[schema(example = "SC")]
    pub code: String,
    /// The new post's id.
    pub postId: i64,
}

/// `{"code":"SC","comment":Comment}`.
#[derive(Debug, ToSchema)]
pub struct Commented {
    /// `SC`.
    #[schema(example = "SC")]
    pub code: String,
    /// The stored comment.
    pub comment: crate::model::Comment,
}

/// A feed page; the frontend echoes `lastPostId`/`lastFavoriteCount` as `postId`/`favoriteCount`.
#[derive(Debug, ToSchema)]
#[allow(non_snake_case)]
pub struct FeedPage {
    /// `SC`.
    #[schema(example = "SC")]
    pub code: String,
    /// Up to 30 posts.
    pub feed: Vec<PostDoc>,
    /// The personalised page index (always null for now).
    #[schema(value_type = Option<i64>)]
    pub pointer: Option<i64>,
    /// Cursor: the last post's id (null on an empty page).
    pub lastPostId: Option<i64>,
    /// Cursor: `-1` when the page ended in the followed tier, else the last post's likes.
    pub lastFavoriteCount: Option<i64>,
}

/// `POST /api/post/comment` body (`postId` a number or a numeric string).
#[derive(Debug, ToSchema)]
#[allow(non_snake_case)]
pub struct CommentBody {
    /// The post (a number or a string holding one).
    #[schema(value_type = i64)]
    pub postId: i64,
    /// 1–2,200 characters, not blank.
    pub comment: String,
}

/// `POST /api/post/view_history` body; anything else is ignored (the answer is always empty).
#[derive(Debug, ToSchema)]
#[allow(non_snake_case)]
pub struct ViewBody {
    /// The post viewed (a number or a string holding one).
    #[schema(value_type = Option<i64>)]
    pub postId: Option<i64>,
    /// When (RFC 3339; the server's time when absent, unparseable or in the future).
    pub viewedAt: Option<String>,
    /// Seconds spent (0–86,400, else stored as null).
    pub timeSpentSeconds: Option<i64>,
}

/// `POST /api/post/create`: 1–10 `images` parts and one `data` part.
#[derive(Debug, ToSchema)]
pub struct CreateForm {
    /// The images (JPEG, PNG, GIF or WebP by their bytes).
    #[schema(value_type = Vec<String>, format = Binary)]
    pub images: Vec<Vec<u8>>,
    /// JSON: `{"comment", "location", "tags": {"<image index>": [{"userId","x","y"}]}, "hashtags": []}`.
    pub data: String,
}
