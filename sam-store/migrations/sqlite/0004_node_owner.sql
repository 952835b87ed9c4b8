-- Whose provider credential made each node (SQLite): `platform` for the platform's
-- own, else `user:<id>` or `project:<id>`. Nodes written before this ran on the
-- platform's credentials, which is what the default says.
ALTER TABLE nodes ADD COLUMN credential_owner TEXT NOT NULL DEFAULT 'platform';
DROP INDEX nodes_warm;
CREATE INDEX nodes_warm ON nodes (provider, size, credential_owner, warm_since) WHERE lifecycle = 'warm';
