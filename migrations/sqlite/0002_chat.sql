-- Chat additions (SQLite flavour; column-for-column identical to ../mysql/0002_chat.sql).
--   * chatroom_participant.history_from: the first message id this member may read (NULL: the
--     whole history). Set to the INVITE message when someone joins a group, so invitees do not
--     read what was said before they joined.
--   * outbox.content_type / outbox.headers (JSON array of [name, value] pairs): the rest of the
--     envelope, so a re-sent row is byte-for-byte what the first attempt would have published.
--   * outbox.attempts / outbox.next_at: the sweeper's retry count and backoff (µs since the epoch).
ALTER TABLE chatroom_participant ADD COLUMN history_from BIGINT;
ALTER TABLE outbox ADD COLUMN content_type VARCHAR(100);
ALTER TABLE outbox ADD COLUMN headers VARCHAR(1000);
ALTER TABLE outbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN next_at BIGINT;
CREATE INDEX ix_outbox_create_at ON outbox (create_at, id);
