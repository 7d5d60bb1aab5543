-- Members for `loadtest chat` on `instar serve` (SQLite): users chat00001 .. chat05000, enough for
-- 100 rooms of 50 or 2,500 DMs. No password (they sign in only with tokens the harness signs).
-- Run against a migrated database, server stopped or running:
--   sqlite3 instar-data/instar.db < scripts/bench/seed_chat.sqlite.sql
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
INSERT OR IGNORE INTO user (id, password, name, email, created_at)
SELECT printf('chat%05d', i), NULL, printf('Chat %d', i), printf('chat%05d@example.com', i),
       1700000000000000
FROM n;
COMMIT;
