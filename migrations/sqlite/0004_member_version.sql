-- A room's membership version: every change to its participants (join, rejoin, leave, hide, show)
-- adds 1 in the same transaction. The chat send writers remember each room's members with the
-- version they were read at and skip reading them again while it is unchanged (docs/chat.md).
ALTER TABLE chatroom ADD COLUMN member_version BIGINT NOT NULL DEFAULT 0;
