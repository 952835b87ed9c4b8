-- What each node reported of its boot (PostgreSQL): the timeline of its phases and, for
-- a failed boot, the phase, exit status and journal tail, each as JSON. NULL for
-- nodes written before this, which read as an empty record.
ALTER TABLE nodes ADD COLUMN boot_timeline TEXT;
ALTER TABLE nodes ADD COLUMN boot_failure TEXT;
-- How many times each task moved off a node it lost (a failed boot, a vanished or
-- failed VM, an agent that does not answer). Tasks written before this never had.
ALTER TABLE tasks ADD COLUMN node_replacements BIGINT NOT NULL DEFAULT 0;
