-- Instar schema, MySQL/MariaDB flavour. Kept column-for-column identical to ../sqlite/0001_schema.sql.
-- Conventions shared by both flavours:
--   * times are BIGINT microseconds since the Unix epoch, UTC (`*_at` columns, `create_at`)
--   * flags are INT 0/1 (no boolean type: the two backends decode booleans differently)
--   * no TEXT columns: MySQL reports TEXT as BLOB, which sqlx's Any driver cannot read as a string,
--     so long strings are VARCHAR(n) with the limit the service enforces;
--   * identifiers compare byte-for-byte (SQLite BINARY, MySQL utf8mb4_bin); e-mail is stored lower-cased.

CREATE TABLE `user` (
    id              VARCHAR(100) NOT NULL PRIMARY KEY,
    password        VARCHAR(255),
    name            VARCHAR(100) NOT NULL,
    sex             VARCHAR(50),
    email           VARCHAR(200) NOT NULL,
    comment         VARCHAR(2200),
    address         VARCHAR(100),
    address_detail  VARCHAR(100),
    follow_count    INT NOT NULL DEFAULT 0,
    follower_count  INT NOT NULL DEFAULT 0,
    post_count      INT NOT NULL DEFAULT 0,
    profile_image   VARCHAR(1024),
    profile_thumbnail VARCHAR(1024),
    profile_blurhash VARCHAR(64),
    role            VARCHAR(10) NOT NULL DEFAULT 'USER',
    type            VARCHAR(20) NOT NULL DEFAULT 'LOCAL',
    social_id       VARCHAR(255),
    last_login_at   BIGINT,
    created_at      BIGINT NOT NULL,
    token_version   INT NOT NULL DEFAULT 0
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE UNIQUE INDEX ux_user_email ON `user` (email);
CREATE UNIQUE INDEX ux_user_social_id ON `user` (social_id);
CREATE INDEX ix_user_last_login_at ON `user` (last_login_at);

CREATE TABLE follows (
    id            BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    follower_id   VARCHAR(100) NOT NULL,
    following_id  VARCHAR(100) NOT NULL,
    create_at     BIGINT NOT NULL,
    FOREIGN KEY (follower_id) REFERENCES `user` (id) ON DELETE CASCADE,
    FOREIGN KEY (following_id) REFERENCES `user` (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE UNIQUE INDEX ux_follows_pair ON follows (follower_id, following_id);
CREATE INDEX ix_follows_following ON follows (following_id);

CREATE TABLE post (
    id              BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id         VARCHAR(100) NOT NULL,
    comment         VARCHAR(2200) NOT NULL,
    location        VARCHAR(100),
    favorite_count  INT NOT NULL DEFAULT 0,
    comment_count   INT NOT NULL DEFAULT 0,
    create_at       BIGINT NOT NULL,
    profile_image   VARCHAR(1024),
    FOREIGN KEY (user_id) REFERENCES `user` (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX ix_post_user_id ON post (user_id, id);
CREATE INDEX ix_post_favorite ON post (favorite_count, id);

CREATE TABLE post_attachments (
    id          BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    post_id     BIGINT NOT NULL,
    url         VARCHAR(1024) NOT NULL,
    thumbnail_url VARCHAR(1024),
    blurhash    VARCHAR(64),
    width       INT,
    height      INT,
    FOREIGN KEY (post_id) REFERENCES post (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX ix_post_attachments_post ON post_attachments (post_id, id);

CREATE TABLE post_attachments_user_tags (
    id                  BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id             VARCHAR(100) NOT NULL,
    post_attachment_id  BIGINT NOT NULL,
    x_coordinate        DOUBLE NOT NULL,
    y_coordinate        DOUBLE NOT NULL,
    create_at           BIGINT,
    FOREIGN KEY (user_id) REFERENCES `user` (id) ON DELETE CASCADE,
    FOREIGN KEY (post_attachment_id) REFERENCES post_attachments (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE UNIQUE INDEX ux_tags_attachment_user ON post_attachments_user_tags (post_attachment_id, user_id);

CREATE TABLE post_comment (
    id         BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id    VARCHAR(100) NOT NULL,
    post_id    BIGINT NOT NULL,
    content    VARCHAR(2200) NOT NULL,
    create_at  BIGINT NOT NULL,
    FOREIGN KEY (user_id) REFERENCES `user` (id) ON DELETE CASCADE,
    FOREIGN KEY (post_id) REFERENCES post (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX ix_comment_post ON post_comment (post_id, id);
CREATE INDEX ix_comment_post_user ON post_comment (post_id, user_id, id);

CREATE TABLE post_favorite (
    id         BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id    VARCHAR(100) NOT NULL,
    post_id    BIGINT NOT NULL,
    create_at  BIGINT,
    FOREIGN KEY (user_id) REFERENCES `user` (id) ON DELETE CASCADE,
    FOREIGN KEY (post_id) REFERENCES post (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE UNIQUE INDEX ux_favorite_post_user ON post_favorite (post_id, user_id);
CREATE INDEX ix_favorite_create_at ON post_favorite (create_at);

CREATE TABLE post_tags (
    post_id   BIGINT NOT NULL,
    tag_name  VARCHAR(100) NOT NULL,
    type      VARCHAR(10) NOT NULL,
    PRIMARY KEY (post_id, tag_name),
    FOREIGN KEY (post_id) REFERENCES post (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX ix_post_tags_name ON post_tags (tag_name);

CREATE TABLE post_view_history (
    id                  BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id             VARCHAR(100) NOT NULL,
    post_id             BIGINT NOT NULL,
    viewed_at           BIGINT NOT NULL,
    time_spent_seconds  INT,
    FOREIGN KEY (user_id) REFERENCES `user` (id) ON DELETE CASCADE,
    FOREIGN KEY (post_id) REFERENCES post (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX ix_view_user_time ON post_view_history (user_id, viewed_at);
CREATE INDEX ix_view_time ON post_view_history (viewed_at);

CREATE TABLE user_interest (
    user_id           VARCHAR(100) NOT NULL,
    interest_keyword  VARCHAR(100) NOT NULL,
    type              VARCHAR(30) NOT NULL,
    score             DOUBLE NOT NULL,
    PRIMARY KEY (user_id, interest_keyword, type),
    FOREIGN KEY (user_id) REFERENCES `user` (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE alarm (
    id            BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id       VARCHAR(100) NOT NULL,
    alarm_type    VARCHAR(32) NOT NULL,
    reference_id  BIGINT NOT NULL,
    create_at     BIGINT NOT NULL,
    FOREIGN KEY (user_id) REFERENCES `user` (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX ix_alarm_user_time ON alarm (user_id, create_at, id);
CREATE INDEX ix_alarm_reference ON alarm (user_id, alarm_type, reference_id);

CREATE TABLE chatroom (
    id                 BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    title              VARCHAR(100),
    type               VARCHAR(30) NOT NULL,
    create_at          BIGINT NOT NULL,
    last_message_time  BIGINT,
    last_message       VARCHAR(4000),
    profile_image      VARCHAR(1024),
    direct_key         VARCHAR(210)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE UNIQUE INDEX ux_chatroom_direct_key ON chatroom (direct_key);
CREATE INDEX ix_chatroom_last_message ON chatroom (last_message_time, id);

CREATE TABLE chatroom_participant (
    chatroom_id  BIGINT NOT NULL,
    user_id      VARCHAR(100) NOT NULL,
    joined_at    BIGINT NOT NULL,
    is_hidden    INT NOT NULL DEFAULT 0,
    PRIMARY KEY (chatroom_id, user_id),
    FOREIGN KEY (chatroom_id) REFERENCES chatroom (id) ON DELETE CASCADE,
    FOREIGN KEY (user_id) REFERENCES `user` (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX ix_participant_user ON chatroom_participant (user_id, chatroom_id);

CREATE TABLE chatroom_message (
    id           BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    chatroom_id  BIGINT NOT NULL,
    sender_id    VARCHAR(100) NOT NULL,
    message      VARCHAR(4000),
    create_at    BIGINT NOT NULL,
    type         VARCHAR(50) NOT NULL,
    FOREIGN KEY (chatroom_id) REFERENCES chatroom (id) ON DELETE CASCADE,
    FOREIGN KEY (sender_id) REFERENCES `user` (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX ix_message_room ON chatroom_message (chatroom_id, id);

CREATE TABLE chatroom_last_read (
    chatroom_id           BIGINT NOT NULL,
    user_id               VARCHAR(100) NOT NULL,
    last_read_message_id  BIGINT,
    PRIMARY KEY (chatroom_id, user_id),
    FOREIGN KEY (chatroom_id) REFERENCES chatroom (id) ON DELETE CASCADE,
    FOREIGN KEY (user_id) REFERENCES `user` (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX ix_last_read_user ON chatroom_last_read (user_id);

CREATE TABLE message_attachment (
    id          BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    message_id  BIGINT NOT NULL,
    url         VARCHAR(1024) NOT NULL,
    type        VARCHAR(50) NOT NULL,
    size        BIGINT NOT NULL,
    file_name   VARCHAR(255) NOT NULL,
    object_key  VARCHAR(1024),
    FOREIGN KEY (message_id) REFERENCES chatroom_message (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX ix_message_attachment_message ON message_attachment (message_id);

-- Messages for the bus written in the same transaction as the change they announce, removed once the
-- bus accepted them (publish after commit; nothing committed is dropped when the bus is down).
CREATE TABLE outbox (
    id           BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    target       VARCHAR(255) NOT NULL,
    destination  VARCHAR(255) NOT NULL,
    body         MEDIUMBLOB NOT NULL,
    create_at    BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
