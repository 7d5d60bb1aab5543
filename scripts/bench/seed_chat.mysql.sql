-- Members for `loadtest chat` on MariaDB/MySQL (`instar social`): users chat00001 .. chat05000,
-- enough for 100 rooms of 50 or 2,500 DMs. No password (the harness signs their tokens).
--   mariadb -h 127.0.0.1 -u root DATABASE < scripts/bench/seed_chat.mysql.sql
-- (MySQL 8 first needs `SET SESSION cte_max_recursion_depth = 10000;`.)
INSERT IGNORE INTO `user` (id, password, name, email, created_at)
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
SELECT CONCAT('chat', LPAD(i, 5, '0')), NULL, CONCAT('Chat ', i),
       CONCAT('chat', LPAD(i, 5, '0'), '@example.com'), 1700000000000000
FROM n;
