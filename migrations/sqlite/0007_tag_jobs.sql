-- Pending image-labelling jobs (social::tagging::worker): one row per post whose first image is
-- still to be labelled, written in the post's own transaction and deleted when its AI_TAG rows
-- are stored, so a restart or a crash loses none.
CREATE TABLE tag_job (
    post_id     INTEGER NOT NULL PRIMARY KEY REFERENCES post (id) ON DELETE CASCADE,
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_at     BIGINT NOT NULL,
    last_error  VARCHAR(500)
);
CREATE INDEX ix_tag_job_next ON tag_job (next_at);
