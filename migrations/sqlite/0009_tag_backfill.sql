-- Checkpoint of `instar tags backfill` (social::tagging::backfill): the walk over existing posts
-- by id keeps the last id it finished here, so an interrupted run resumes after it and no post is
-- sent to the labeler twice. One row per walk (`name`).
CREATE TABLE tag_backfill (
    name        VARCHAR(50) NOT NULL PRIMARY KEY,
    after_id    BIGINT NOT NULL,
    labelled    BIGINT NOT NULL DEFAULT 0,
    unlabelled  BIGINT NOT NULL DEFAULT 0,
    refused     BIGINT NOT NULL DEFAULT 0,
    started_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
