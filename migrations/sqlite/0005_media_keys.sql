-- Media are stored as object keys (`post/…`, `profile/…`), rendered as absolute URLs when they
-- leave the service. Rows written with the local backend's default prefix (`/media/{key}`)
-- become keys; anything else (a legacy bucket URL, another prefix) is left as it is and still
-- rendered correctly (see social::media::Links).
UPDATE user SET profile_image = SUBSTR(profile_image, 8) WHERE profile_image LIKE '/media/%';
UPDATE user SET profile_thumbnail = SUBSTR(profile_thumbnail, 8) WHERE profile_thumbnail LIKE '/media/%';
UPDATE post SET profile_image = SUBSTR(profile_image, 8) WHERE profile_image LIKE '/media/%';
UPDATE post_attachments SET url = SUBSTR(url, 8) WHERE url LIKE '/media/%';
UPDATE post_attachments SET thumbnail_url = SUBSTR(thumbnail_url, 8) WHERE thumbnail_url LIKE '/media/%';
UPDATE chatroom SET profile_image = SUBSTR(profile_image, 8) WHERE profile_image LIKE '/media/%';
UPDATE message_attachment SET url = SUBSTR(url, 8) WHERE url LIKE '/media/%';
