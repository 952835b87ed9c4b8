-- Setup choices: the platform resources each user chose for their setup (PostgreSQL).
-- They sit beside the user's body rather than in it, so writing a user's name and
-- settings never undoes a choice made at the same time, and the other way round.
-- A user who never chose chose nothing: both default to 0 (1 is chosen).

ALTER TABLE users ADD COLUMN platform_ai BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN platform_infrastructure BIGINT NOT NULL DEFAULT 0;
