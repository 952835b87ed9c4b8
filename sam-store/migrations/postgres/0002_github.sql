-- GitHub repositories: what a task left in its repository, and the users' links to
-- GitHub App installations.

-- The branch, commit and pull request a task pushed (JSON), once it has.
ALTER TABLE tasks ADD COLUMN output TEXT;

-- One user's link to an installation. The id is the storage key
-- ("<user id>:<external id>"); external_id is GitHub's own installation id, the only
-- one GitHub API calls use. Two users of one organisation have two rows with the
-- same external_id.
CREATE TABLE github_installations (
    id          TEXT PRIMARY KEY NOT NULL,
    user_id     TEXT NOT NULL,
    external_id BIGINT NOT NULL,
    account     TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE INDEX github_installations_by_user ON github_installations (user_id, created_at, id);
