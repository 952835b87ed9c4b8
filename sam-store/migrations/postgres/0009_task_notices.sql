-- What the runner noticed about where each task could run (a capacity failure, a
-- capacity wait, a downgrade), kept so a user sees it after the fact: one row per
-- notice, numbered per task in the order written, the notice as JSON.
CREATE TABLE task_notices (
    task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    at BIGINT NOT NULL,
    notice TEXT NOT NULL,
    PRIMARY KEY (task_id, seq)
);
