-- The key of the `/app/send` command a message was stored for: the gateway gives every SEND a key
-- unique across the deployment (a random per-session prefix and a counter), carried through the bus.
-- The bus delivers commands at least once (a redelivery after a social process dies, or after the
-- broker restarts, before the command was acknowledged); the unique index makes a redelivered
-- command find its message instead of storing it twice (docs/chat.md, "Exactly once"). Messages
-- stored by REST (files, invites, leaves) and rows from before have none (NULLs are never equal).
ALTER TABLE chatroom_message ADD COLUMN command_key VARCHAR(64);
CREATE UNIQUE INDEX ux_message_command ON chatroom_message (command_key);
