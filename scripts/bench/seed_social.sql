-- Seeds a SQLite database of `instar serve` for the REST benchmarks (docs/benchmarks.md):
-- 10,000 users, 100,000 posts with one image each, every user following 20 others, likes and
-- comments spread over the posts. Run against a freshly migrated database:
--   sqlite3 instar-data/instar.db < scripts/bench/seed_social.sql
PRAGMA journal_mode = WAL;
PRAGMA synchronous = OFF;
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000)
INSERT INTO user (id, password, name, email, comment, profile_image, created_at)
SELECT printf('user%05d', i), NULL, printf('User %d', i), printf('user%05d@example.com', i), '',
       printf('/media/profile/u%d', i), 1700000000000000
FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000)
INSERT INTO post (id, user_id, comment, location, favorite_count, comment_count, create_at, profile_image)
SELECT i, printf('user%05d', 1 + (i % 10000)), printf('caption %d #tag%d', i, i % 50), 'Seoul',
       (i * 7919) % 500, (i * 104729) % 40, 1700000000000000 + i * 1000000,
       printf('/media/post/p%d', i)
FROM n;
INSERT INTO post_attachments (post_id, url, thumbnail_url, blurhash, width, height)
SELECT id, printf('/media/post/p%d', id), printf('/media/post/p%d_thumb', id), 'LEHV6nWB2yk8pyo0adR*.7kCMdnj', 1080, 1080
FROM post;
INSERT INTO post_tags (post_id, tag_name, type) SELECT id, printf('tag%d', id % 50), 'HASH_TAG' FROM post;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000),
     k(j) AS (SELECT 1 UNION ALL SELECT j + 1 FROM k WHERE j < 20)
INSERT INTO follows (follower_id, following_id, create_at)
SELECT printf('user%05d', i), printf('user%05d', 1 + ((i + j * 37) % 10000)), 1700000000000000
FROM n, k WHERE 1 + ((i + j * 37) % 10000) <> i;
UPDATE user SET follow_count = 20, follower_count = 20, post_count = 10;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000)
INSERT OR IGNORE INTO post_favorite (user_id, post_id, create_at)
SELECT printf('user%05d', 1 + ((i * 31) % 10000)), i, 1700000000000000 FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000)
INSERT INTO post_comment (user_id, post_id, content, create_at)
SELECT printf('user%05d', 1 + ((i * 17) % 10000)), 1 + ((i * 13) % 100000), 'nice', 1700000000000000 FROM n;
COMMIT;
ANALYZE;
