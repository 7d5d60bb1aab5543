-- Seeds a freshly migrated SQLite database of `instar serve` for the feed benchmark
-- (docs/benchmarks.md, "Personalised feed"; run by scripts/bench/feed.sh):
-- 10,000 users all signed in within 30 days (user00001 is an administrator), 100,000 posts over
-- the last 60 days (one hashtag of 500 and one image tag of 200 each), 20 follows per user
-- (users 9981-10000 follow nobody: they measure the interaction-to-feed latency), about
-- 400,000 likes, 200,000 comments and 400,000 views inside their windows, and 600 "hot" posts
-- (30 for each of hot1..hot20, 1,000 likes each, ids 100001-100600).
PRAGMA journal_mode = WAL;
PRAGMA synchronous = OFF;
BEGIN;
CREATE TEMP TABLE clock AS SELECT CAST(strftime('%s', 'now') AS INTEGER) * 1000000 AS now;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000)
INSERT INTO user (id, password, name, email, comment, profile_image, created_at, last_login_at, role)
SELECT printf('user%05d', i), NULL, printf('User %d', i), printf('user%05d@example.com', i), '',
       printf('/media/profile/u%d', i), (SELECT now FROM clock) - 90 * 86400000000,
       (SELECT now FROM clock) - (i % 29) * 86400000000, CASE WHEN i = 1 THEN 'ADMIN' ELSE 'USER' END
FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000)
INSERT INTO post (id, user_id, comment, location, favorite_count, comment_count, create_at, profile_image)
SELECT i, printf('user%05d', 1 + (i % 10000)), printf('caption %d #tag%d', i, i % 500), 'Seoul',
       (i * 7919) % 500, (i * 104729) % 40,
       (SELECT now FROM clock) - ((i * 7907) % 5184000) * 1000000, printf('/media/post/p%d', i)
FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 600)
INSERT INTO post (id, user_id, comment, location, favorite_count, comment_count, create_at, profile_image)
SELECT 100000 + i, 'user00002', printf('hot %d #hot%d', i, 1 + (i - 1) / 30), 'Seoul', 1000, 0,
       (SELECT now FROM clock) - i * 1000000, printf('/media/post/h%d', i)
FROM n;
INSERT INTO post_attachments (post_id, url, thumbnail_url, blurhash, width, height)
SELECT id, printf('/media/post/p%d', id), printf('/media/post/p%d_thumb', id), 'LEHV6nWB2yk8pyo0adR*.7kCMdnj', 1080, 1080
FROM post;
INSERT INTO post_tags (post_id, tag_name, type) SELECT id, printf('tag%d', id % 500), 'HASH_TAG' FROM post WHERE id <= 100000;
INSERT INTO post_tags (post_id, tag_name, type) SELECT id, printf('label%d', (id * 13) % 200), 'AI_TAG' FROM post WHERE id <= 100000;
INSERT INTO post_tags (post_id, tag_name, type) SELECT id, printf('hot%d', 1 + (id - 100001) / 30), 'HASH_TAG' FROM post WHERE id > 100000;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 9980),
     k(j) AS (SELECT 1 UNION ALL SELECT j + 1 FROM k WHERE j < 20)
INSERT INTO follows (follower_id, following_id, create_at)
SELECT printf('user%05d', i), printf('user%05d', 1 + ((i + j * 37) % 10000)), 1700000000000000
FROM n, k WHERE 1 + ((i + j * 37) % 10000) <> i;
UPDATE user SET follow_count = 20, follower_count = 20, post_count = 10;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 400000)
INSERT OR IGNORE INTO post_favorite (user_id, post_id, create_at)
SELECT printf('user%05d', 1 + (i % 9980)), 1 + ((i * 7919) % 100000),
       (SELECT now FROM clock) - ((i * 104723) % 2592000) * 1000000 FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000)
INSERT INTO post_comment (user_id, post_id, content, create_at)
SELECT printf('user%05d', 1 + ((i * 17) % 9980)), 1 + ((i * 13) % 100000), 'nice',
       (SELECT now FROM clock) - ((i * 7901) % 2592000) * 1000000 FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 400000)
INSERT INTO post_view_history (user_id, post_id, viewed_at, time_spent_seconds)
SELECT printf('user%05d', 1 + ((i * 29) % 9980)), 1 + ((i * 6007) % 100000),
       (SELECT now FROM clock) - ((i * 3571) % 2592000) * 1000000, 5 FROM n;
COMMIT;
ANALYZE;
