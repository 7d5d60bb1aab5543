-- Instar schema, SQLite flavour. Kept column-for-column identical to ../mysql/0001_schema.sql.
-- Conventions shared by both flavours:
--   * times are BIGINT microseconds since the Unix epoch, UTC (`*_at` columns, `create_at`);
--   * flags are INTEGER 0/1 (no boolean type: the two backends decode booleans differently);
--   * no TEXT columns: MySQL reports TEXT as BLOB, which sqlx's Any driver cannot read as a string,
--     so long strings are VARCHAR(n) with the limit the service enforces;
--   * identifiers compare byte-for-byte (SQLite BINARY, MySQL utf8mb4_bin); e-mail is stored lower-cased.

CREATE TABLE user (
    id              VARCHAR(100) NOT NULL PRIMARY KEY,
    password        VARCHAR(255),
    name            VARCHAR(100) NOT NULL,
    sex             VARCHAR(50),
    email           VARCHAR(200) NOT NULL,
    comment         VARCHAR(2200),
    address         VARCHAR(100),
    address_detail  VARCHAR(100),
    follow_count    INTEGER NOT NULL DEFAULT 0,
    follower_count  INTEGER NOT NULL DEFAULT 0,
    post_count      INTEGER NOT NULL DEFAULT 0,
    profile_image   VARCHAR(1024),
    profile_thumbnail VARCHAR(1024),
    profile_blurhash VARCHAR(64),
    role            VARCHAR(10) NOT NULL DEFAULT 'USER',
    type            VARCHAR(20) NOT NULL DEFAULT 'LOCAL',
    social_id       VARCHAR(255),
    last_login_at   BIGINT,
    created_at      BIGINT NOT NULL,
    token_version   INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX ux_user_email ON user (email);
CREATE UNIQUE INDEX ux_user_social_id ON user (social_id);
CREATE INDEX ix_user_last_login_at ON user (last_login_at);

CREATE TABLE follows (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    follower_id   VARCHAR(100) NOT NULL REFERENCES user (id) ON DELETE CASCADE,
    following_id  VARCHAR(100) NOT NULL REFERENCES user (id) ON DELETE CASCADE,
    create_at     BIGINT NOT NULL
);
CREATE UNIQUE INDEX ux_follows_pair ON follows (follower_id, following_id);
CREATE INDEX ix_follows_following ON follows (following_id);

CREATE TABLE post (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id         VARCHAR(100) NOT NULL REFERENCES user (id) ON DELETE CASCADE,
    comment         VARCHAR(2200) NOT NULL,
    location        VARCHAR(100),
    favorite_count  INTEGER NOT NULL DEFAULT 0,
    comment_count   INTEGER NOT NULL DEFAULT 0,
    create_at       BIGINT NOT NULL,
    profile_image   VARCHAR(1024)
);
CREATE INDEX ix_post_user_id ON post (user_id, id);
CREATE INDEX ix_post_favorite ON post (favorite_count, id);

CREATE TABLE post_attachments (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    post_id     INTEGER NOT NULL REFERENCES post (id) ON DELETE CASCADE,
    url         VARCHAR(1024) NOT NULL,
    thumbnail_url VARCHAR(1024),
    blurhash    VARCHAR(64),
    width       INTEGER,
    height      INTEGER
);
CREATE INDEX ix_post_attachments_post ON post_attachments (post_id, id);

CREATE TABLE post_attachments_user_tags (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id             VARCHAR(100) NOT NULL REFERENCES user (id) ON DELETE CASCADE,
    post_attachment_id  INTEGER NOT NULL REFERENCES post_attachments (id) ON DELETE CASCADE,
    x_coordinate        DOUBLE NOT NULL,
    y_coordinate        DOUBLE NOT NULL,
    create_at           BIGINT
);
CREATE UNIQUE INDEX ux_tags_attachment_user ON post_attachments_user_tags (post_attachment_id, user_id);

CREATE TABLE post_comment (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    VARCHAR(100) NOT NULL REFERENCES user (id) ON DELETE CASCADE,
    post_id    INTEGER NOT NULL REFERENCES post (id) ON DELETE CASCADE,
    content    VARCHAR(2200) NOT NULL,
    create_at  BIGINT NOT NULL
);
CREATE INDEX ix_comment_post ON post_comment (post_id, id);
CREATE INDEX ix_comment_post_user ON post_comment (post_id, user_id, id);

CREATE TABLE post_favorite (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    VARCHAR(100) NOT NULL REFERENCES user (id) ON DELETE CASCADE,
    post_id    INTEGER NOT NULL REFERENCES post (id) ON DELETE CASCADE,
    create_at  BIGINT
);
CREATE UNIQUE INDEX ux_favorite_post_user ON post_favorite (post_id, user_id);
CREATE INDEX ix_favorite_create_at ON post_favorite (create_at);

CREATE TABLE post_tags (
    post_id   INTEGER NOT NULL REFERENCES post (id) ON DELETE CASCADE,
    tag_name  VARCHAR(100) NOT NULL,
    type      VARCHAR(10) NOT NULL,
    PRIMARY KEY (post_id, tag_name)
);
CREATE INDEX ix_post_tags_name ON post_tags (tag_name);

CREATE TABLE post_view_history (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id             VARCHAR(100) NOT NULL REFERENCES user (id) ON DELETE CASCADE,
    post_id             INTEGER NOT NULL REFERENCES post (id) ON DELETE CASCADE,
    viewed_at           BIGINT NOT NULL,
    time_spent_seconds  INTEGER
);
CREATE INDEX ix_view_user_time ON post_view_history (user_id, viewed_at);
CREATE INDEX ix_view_time ON post_view_history (viewed_at);

CREATE TABLE user_interest (
    user_id           VARCHAR(100) NOT NULL REFERENCES user (id) ON DELETE CASCADE,
    interest_keyword  VARCHAR(100) NOT NULL,
    type              VARCHAR(30) NOT NULL,
    score             DOUBLE NOT NULL,
    PRIMARY KEY (user_id, interest_keyword, type)
);

CREATE TABLE alarm (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id       VARCHAR(100) NOT NULL REFERENCES user (id) ON DELETE CASCADE,
    alarm_type    VARCHAR(32) NOT NULL,
    reference_id  BIGINT NOT NULL,
    create_at     BIGINT NOT NULL
);
CREATE INDEX ix_alarm_user_time ON alarm (user_id, create_at, id);
CREATE INDEX ix_alarm_reference ON alarm (user_id, alarm_type, reference_id);

CREATE TABLE chatroom (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    title              VARCHAR(100),
    type               VARCHAR(30) NOT NULL,
    create_at          BIGINT NOT NULL,
    last_message_time  BIGINT,
    last_message       VARCHAR(4000),
    profile_image      VARCHAR(1024),
    direct_key         VARCHAR(210)
);
CREATE UNIQUE INDEX ux_chatroom_direct_key ON chatroom (direct_key);
CREATE INDEX ix_chatroom_last_message ON chatroom (last_message_time, id);

CREATE TABLE chatroom_participant (
    chatroom_id  INTEGER NOT NULL REFERENCES chatroom (id) ON DELETE CASCADE,
    user_id      VARCHAR(100) NOT NULL REFERENCES user (id) ON DELETE CASCADE,
    joined_at    BIGINT NOT NULL,
    is_hidden    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (chatroom_id, user_id)
);
CREATE INDEX ix_participant_user ON chatroom_participant (user_id, chatroom_id);

CREATE TABLE chatroom_message (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    chatroom_id  INTEGER NOT NULL REFERENCES chatroom (id) ON DELETE CASCADE,
    sender_id    VARCHAR(100) NOT NULL REFERENCES user (id) ON DELETE CASCADE,
    message      VARCHAR(4000),
    create_at    BIGINT NOT NULL,
    type         VARCHAR(50) NOT NULL
);
CREATE INDEX ix_message_room ON chatroom_message (chatroom_id, id);

CREATE TABLE chatroom_last_read (
    chatroom_id           INTEGER NOT NULL REFERENCES chatroom (id) ON DELETE CASCADE,
    user_id               VARCHAR(100) NOT NULL REFERENCES user (id) ON DELETE CASCADE,
    last_read_message_id  BIGINT,
    PRIMARY KEY (chatroom_id, user_id)
);
CREATE INDEX ix_last_read_user ON chatroom_last_read (user_id);

CREATE TABLE message_attachment (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id  INTEGER NOT NULL REFERENCES chatroom_message (id) ON DELETE CASCADE,
    url         VARCHAR(1024) NOT NULL,
    type        VARCHAR(50) NOT NULL,
    size        BIGINT NOT NULL,
    file_name   VARCHAR(255) NOT NULL,
    object_key  VARCHAR(1024)
);
CREATE INDEX ix_message_attachment_message ON message_attachment (message_id);

-- Messages for the bus written in the same transaction as the change they announce, removed once the
-- bus accepted them (publish after commit; nothing committed is dropped when the bus is down).
CREATE TABLE outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    target       VARCHAR(255) NOT NULL,
    destination  VARCHAR(255) NOT NULL,
    body         BLOB NOT NULL,
    create_at    BIGINT NOT NULL
);
