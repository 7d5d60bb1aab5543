//! How a post is rendered for the feed and the detail view: the hand-written JSON of
//! [`Post`] (assembled from the read cache's parts) and [`ShownPost`] (a view rendered once for
//! every viewer, plus this viewer's `isLiked`). Written by hand so that the part every viewer
//! shares is rendered once per post and copied into each response as it is.

/// A post as the feed and the detail view show it, assembled from cached parts and written by
/// [`Post::write_json`]:
/// `{"postId","user","comment","location","favoriteCount","commentCount","createdAt","imageTags",
/// "hashtags","aiTags","isLiked"}` (`hashtags` and `aiTags` are additions the frontend ignores).
#[derive(Debug, Clone)]
pub struct Post {
    /// The post row (id, caption, place, counts, creation time).
    pub row: std::sync::Arc<crate::store::posts::PostRow>,
    /// Author: a [`SimpleUser`] (`following` always false) as JSON.
    pub user: std::sync::Arc<crate::cache::Json>,
    /// Images in upload order: an array of [`ImageTags`] as JSON.
    pub image_tags: std::sync::Arc<crate::cache::Json>,
    /// The post's tags: `hashtags` (its `HASH_TAG` rows) and `aiTags` (`AI_TAG`, image labels).
    pub tags: std::sync::Arc<crate::cache::TagsJson>,
    /// Whether the caller likes the post (the original computed it for the author).
    pub is_liked: bool,
}

impl Post {
    /// Appends the post as a JSON object.
    pub fn write_json(&self, out: &mut String) {
        self.write_head(out);
        out.push_str(liked_tail(self.is_liked));
    }

    /// Appends the post's object up to and including `"isLiked":` (the part every viewer shares).
    pub fn write_head(&self, out: &mut String) {
        use crate::json::push_i64;
        let r = &self.row;
        out.push_str("{\"postId\":");
        push_i64(out, r.id);
        out.push_str(",\"user\":");
        out.push_str(self.user.get());
        out.push(',');
        out.push_str(r.fixed_json());
        out.push_str(",\"favoriteCount\":");
        push_i64(out, r.favorite_count);
        out.push_str(",\"commentCount\":");
        push_i64(out, r.comment_count);
        out.push_str(",\"imageTags\":");
        out.push_str(self.image_tags.get());
        out.push(',');
        out.push_str(&self.tags.0);
        out.push_str(",\"isLiked\":");
    }
}

/// The end of a post object after its head.
fn liked_tail(is_liked: bool) -> &'static str {
    if is_liked { "true}" } else { "false}" }
}

/// A post as a response shows it: its view, rendered once for every viewer, and this viewer's
/// `isLiked`.
#[derive(Debug, Clone)]
pub struct ShownPost {
    /// The shared part.
    pub view: std::sync::Arc<crate::cache::PostView>,
    /// Whether the caller likes the post.
    pub is_liked: bool,
}

impl ShownPost {
    /// Appends the post as a JSON object (the same text as [`Post::write_json`]).
    pub fn write_json(&self, out: &mut String) {
        out.push_str(&self.view.head);
        out.push_str(liked_tail(self.is_liked));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::cache::{TagsJson, to_json};
    use crate::model::{ImageTags, PostTag, SimpleUser};
    use crate::store::posts::PostRow;

    fn post(location: Option<&str>, liked: bool) -> Post {
        let user = SimpleUser {
            id: "u1".into(),
            name: "Name \"quoted\"".into(),
            profile_image: None,
            following: false,
        };
        let images = vec![ImageTags {
            url: "/media/a".into(),
            thumbnail_url: Some("/media/a_t".into()),
            blurhash: None,
            width: Some(10),
            height: None,
            tags: vec![PostTag {
                user_id: "u2".into(),
                x: 12.5,
                y: 0.0,
            }],
        }];
        Post {
            row: Arc::new(PostRow {
                id: 42,
                user_id: "u1".into(),
                comment: "line\none \\ #태그 \u{1}".into(),
                location: location.map(str::to_owned),
                favorite_count: 3,
                comment_count: -0,
                create_at: 1_736_850_531_123_456,
                json: Default::default(),
            }),
            user: Arc::new(to_json(&user)),
            image_tags: Arc::new(to_json(&images)),
            tags: Arc::new(TagsJson::render(["여행", "sea \"x\""], ["Sky"])),
            is_liked: liked,
        }
    }

    #[test]
    fn a_post_is_written_with_the_contract_fields() {
        for (location, liked) in [(Some("Seoul \"C\""), true), (None, false)] {
            let p = post(location, liked);
            let mut out = String::new();
            p.write_json(&mut out);
            // Twice: the second use takes the row's rendered part from its memo.
            let mut again = String::new();
            p.write_json(&mut again);
            assert_eq!(out, again);
            let value: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
            assert_eq!(
                value,
                json!({
                    "postId": 42,
                    "user": {"id": "u1", "name": "Name \"quoted\"", "profileImage": null, "following": false},
                    "comment": "line\none \\ #태그 \u{1}",
                    "location": location,
                    "favoriteCount": 3,
                    "commentCount": 0,
                    "createdAt": "2025-01-14T10:28:51.123456",
                    "imageTags": [{"url": "/media/a", "thumbnailUrl": "/media/a_t", "blurhash": null,
                                   "width": 10, "height": null,
                                   "tags": [{"userId": "u2", "x": 12.5, "y": 0.0}]}],
                    "hashtags": ["여행", "sea \"x\""],
                    "aiTags": ["Sky"],
                    "isLiked": liked,
                })
            );
        }
    }
}
