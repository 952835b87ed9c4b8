-- Projects, users, agent profiles and credentials (SQLite).
-- Each record is JSON text in `body`; the columns beside it are the keys the store
-- looks rows up, orders and constrains by. Credentials are stored sealed only.

CREATE TABLE users (
    id         TEXT PRIMARY KEY NOT NULL,
    body       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE projects (
    id         TEXT PRIMARY KEY NOT NULL,
    body       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX projects_by_creation ON projects (created_at, id);

CREATE TABLE agent_profiles (
    id         TEXT PRIMARY KEY NOT NULL,
    project_id TEXT NOT NULL,
    name       TEXT NOT NULL,
    body       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (project_id, name)
);
CREATE INDEX agent_profiles_by_project ON agent_profiles (project_id, created_at, id);

CREATE TABLE credentials (
    owner  TEXT NOT NULL,
    target TEXT NOT NULL,
    body   TEXT NOT NULL,
    PRIMARY KEY (owner, target)
);
