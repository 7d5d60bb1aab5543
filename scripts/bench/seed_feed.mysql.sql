-- The MariaDB twin of seed_feed.sqlite.sql (same rows; needs MariaDB's Sequence engine for
-- seq_1_to_N). Run against a freshly migrated database:
--   mariadb DB < scripts/bench/seed_feed.mysql.sql
SET unique_checks = 0, foreign_key_checks = 0;
SET @now = UNIX_TIMESTAMP() * 1000000;
START TRANSACTION;
INSERT INTO `user` (id, password, name, email, comment, profile_image, created_at, last_login_at, role)
SELECT CONCAT('user', LPAD(seq, 5, '0')), NULL, CONCAT('User ', seq), CONCAT('user', LPAD(seq, 5, '0'), '@example.com'), '',
       CONCAT('/media/profile/u', seq), @now - 90 * 86400000000,
       @now - (seq % 29) * 86400000000, IF(seq = 1, 'ADMIN', 'USER')
FROM seq_1_to_10000;
INSERT INTO post (id, user_id, comment, location, favorite_count, comment_count, create_at, profile_image)
SELECT seq, CONCAT('user', LPAD(1 + (seq % 10000), 5, '0')), CONCAT('caption ', seq, ' #tag', seq % 500), 'Seoul',
       (seq * 7919) % 500, (seq * 104729) % 40, @now - ((seq * 7907) % 5184000) * 1000000,
       CONCAT('/media/post/p', seq)
FROM seq_1_to_100000;
INSERT INTO post (id, user_id, comment, location, favorite_count, comment_count, create_at, profile_image)
SELECT 100000 + seq, 'user00002', CONCAT('hot ', seq, ' #hot', 1 + (seq - 1) DIV 30), 'Seoul', 1000, 0,
       @now - seq * 1000000, CONCAT('/media/post/h', seq)
FROM seq_1_to_600;
INSERT INTO post_attachments (post_id, url, thumbnail_url, blurhash, width, height)
SELECT id, CONCAT('/media/post/p', id), CONCAT('/media/post/p', id, '_thumb'), 'LEHV6nWB2yk8pyo0adR*.7kCMdnj', 1080, 1080
FROM post;
INSERT INTO post_tags (post_id, tag_name, type) SELECT id, CONCAT('tag', id % 500), 'HASH_TAG' FROM post WHERE id <= 100000;
INSERT INTO post_tags (post_id, tag_name, type) SELECT id, CONCAT('label', (id * 13) % 200), 'AI_TAG' FROM post WHERE id <= 100000;
INSERT INTO post_tags (post_id, tag_name, type) SELECT id, CONCAT('hot', 1 + (id - 100001) DIV 30), 'HASH_TAG' FROM post WHERE id > 100000;
INSERT INTO follows (follower_id, following_id, create_at)
SELECT CONCAT('user', LPAD(n.seq, 5, '0')), CONCAT('user', LPAD(1 + ((n.seq + k.seq * 37) % 10000), 5, '0')), 1700000000000000
FROM seq_1_to_9980 n, seq_1_to_20 k WHERE 1 + ((n.seq + k.seq * 37) % 10000) <> n.seq;
UPDATE `user` SET follow_count = 20, follower_count = 20, post_count = 10;
INSERT IGNORE INTO post_favorite (user_id, post_id, create_at)
SELECT CONCAT('user', LPAD(1 + (seq % 9980), 5, '0')), 1 + ((seq * 7919) % 100000),
       @now - ((seq * 104723) % 2592000) * 1000000 FROM seq_1_to_400000;
INSERT INTO post_comment (user_id, post_id, content, create_at)
SELECT CONCAT('user', LPAD(1 + ((seq * 17) % 9980), 5, '0')), 1 + ((seq * 13) % 100000), 'nice',
       @now - ((seq * 7901) % 2592000) * 1000000 FROM seq_1_to_200000;
INSERT INTO post_view_history (user_id, post_id, viewed_at, time_spent_seconds)
SELECT CONCAT('user', LPAD(1 + ((seq * 29) % 9980), 5, '0')), 1 + ((seq * 6007) % 100000),
       @now - ((seq * 3571) % 2592000) * 1000000, 5 FROM seq_1_to_400000;
COMMIT;
ANALYZE TABLE `user`, post, post_tags, follows, post_favorite, post_comment, post_view_history;
