-- Pending image-labelling jobs (social::tagging::worker): one row per post whose first image is
-- still to be labelled, written in the post's own transaction and deleted when its AI_TAG rows
-- are stored, so a restart or a crash loses none.
CREATE TABLE tag_job (
    post_id     BIGINT NOT NULL PRIMARY KEY,
    attempts    INT NOT NULL DEFAULT 0,
    next_at     BIGINT NOT NULL,
    last_error  VARCHAR(500),
    FOREIGN KEY (post_id) REFERENCES post (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX ix_tag_job_next ON tag_job (next_at);
