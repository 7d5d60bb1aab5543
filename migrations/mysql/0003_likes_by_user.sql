-- A viewer's liked posts in one index range (the read cache loads them per viewer).
CREATE INDEX ix_favorite_user_post ON post_favorite (user_id, post_id);
