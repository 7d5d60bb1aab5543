-- Members for `loadtest chat` and `loadtest faults` on MariaDB/MySQL (`instar social`): users
-- chat00001 .. chat05000, enough for 100 rooms of 50 or 2,500 DMs. No password (the harness signs
-- their tokens).
--   mariadb -h 127.0.0.1 -u root DATABASE < scripts/bench/seed_chat.mysql.sql
-- The numbers come from four cross-joined digit tables, not a recursive CTE: stock MariaDB stops a
-- recursion after max_recursive_iterations = 1000 rows (MySQL 8: cte_max_recursion_depth = 1000),
-- which created only the first 1,001 users.
INSERT IGNORE INTO `user` (id, password, name, email, created_at)
SELECT CONCAT('chat', LPAD(n.i, 5, '0')), NULL, CONCAT('Chat ', n.i),
       CONCAT('chat', LPAD(n.i, 5, '0'), '@example.com'), 1700000000000000
FROM (
  SELECT 1 + a.d + 10 * b.d + 100 * c.d + 1000 * e.d AS i
  FROM (SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4
        UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9) a
  CROSS JOIN (SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4
        UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9) b
  CROSS JOIN (SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4
        UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9) c
  CROSS JOIN (SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4
        UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9) e
) n
WHERE n.i <= 5000;
