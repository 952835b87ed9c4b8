-- Each task's transcript: everything that happened to it and everything its agent
-- said and did, one row per entry, numbered per task in the order written (appends
-- to one task hold the task's row lock, so numbers commit in order); the entry as
-- JSON, its kind (the JSON's `type`) beside it for reads by kind. It takes over the
-- notices, whose JSON is already an entry's.
CREATE TABLE task_events (
    task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    at BIGINT NOT NULL,
    kind_name TEXT NOT NULL,
    kind TEXT NOT NULL,
    PRIMARY KEY (task_id, seq)
);
CREATE INDEX task_events_by_kind ON task_events (task_id, kind_name, seq);
INSERT INTO task_events (task_id, seq, at, kind_name, kind)
SELECT task_id, seq, at, (notice::json ->> 'type'), notice FROM task_notices;
DROP TABLE task_notices;
