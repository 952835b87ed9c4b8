-- Whose provider credential made each node (PostgreSQL): `platform` for the
-- platform's own, else `user:<id>` or `project:<id>`. Nodes written before this ran
-- on the platform's credentials, which is what the default says.
ALTER TABLE nodes ADD COLUMN credential_owner TEXT NOT NULL DEFAULT 'platform';
-- The VM's address once it ran, by which the nodes of a user's or project's account
-- are reached (the platform's provider cannot look them up).
ALTER TABLE nodes ADD COLUMN address TEXT;
DROP INDEX nodes_warm;
CREATE INDEX nodes_warm ON nodes (provider, size, credential_owner, warm_since) WHERE lifecycle = 'warm';
