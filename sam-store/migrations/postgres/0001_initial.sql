-- Initial schema (PostgreSQL).
-- Timestamps are microseconds since the Unix epoch (UTC); JSON columns hold TEXT.

CREATE TABLE tasks (
    id                      TEXT PRIMARY KEY NOT NULL,
    status                  TEXT NOT NULL,
    execution_step          TEXT NOT NULL,
    spec                    TEXT NOT NULL,
    provider                TEXT NOT NULL,
    requested_size          TEXT NOT NULL,
    size_source             TEXT NOT NULL,
    requested_location      TEXT,
    location_source         TEXT NOT NULL,
    requirements            TEXT NOT NULL,
    reservation             TEXT NOT NULL,
    placement               TEXT,
    provisioned_node_id     TEXT,
    provisioned_size        TEXT,
    provisioned_location    TEXT,
    workspace_id            TEXT,
    next_wake_at            BIGINT,
    lease_owner             TEXT,
    lease_expires_at        BIGINT,
    provisioning_started_at BIGINT,
    step_started_at         BIGINT NOT NULL,
    error_category          TEXT,
    error_message           TEXT,
    created_at              BIGINT NOT NULL,
    updated_at              BIGINT NOT NULL,
    capacity_passes         BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX tasks_by_creation ON tasks (created_at, id);
CREATE INDEX tasks_by_wake ON tasks (next_wake_at)
    WHERE status NOT IN ('completed', 'failed', 'cancelled');
CREATE INDEX tasks_by_node ON tasks (provisioned_node_id);

CREATE TABLE task_status_events (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id     TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    from_status TEXT,
    to_status   TEXT NOT NULL,
    actor       TEXT NOT NULL,
    reason      TEXT,
    at          BIGINT NOT NULL
);
CREATE INDEX task_status_events_by_task ON task_status_events (task_id, id);

CREATE TABLE nodes (
    id                TEXT PRIMARY KEY NOT NULL,
    provider          TEXT NOT NULL,
    vm_id             TEXT,
    size              TEXT NOT NULL,
    server_type       TEXT NOT NULL,
    location          TEXT NOT NULL,
    capacity          TEXT NOT NULL,
    labels            TEXT NOT NULL,
    status            TEXT NOT NULL,
    lifecycle         TEXT NOT NULL,
    warm_since        BIGINT,
    health            TEXT NOT NULL,
    last_heartbeat_at BIGINT,
    agent_version     TEXT,
    ready_at          BIGINT,
    created_for       TEXT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);
CREATE INDEX nodes_by_creation ON nodes (created_at, id);
CREATE INDEX nodes_warm ON nodes (provider, size, warm_since) WHERE lifecycle = 'warm';

CREATE TABLE workspaces (
    id                TEXT PRIMARY KEY NOT NULL,
    node_id           TEXT NOT NULL,
    task_id           TEXT NOT NULL,
    status            TEXT NOT NULL,
    effective_profile TEXT,
    reservation       TEXT NOT NULL,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);
CREATE INDEX workspaces_by_node ON workspaces (node_id, created_at, id);

CREATE TABLE api_tokens (
    id         TEXT PRIMARY KEY NOT NULL,
    hash       TEXT NOT NULL UNIQUE,
    label      TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
