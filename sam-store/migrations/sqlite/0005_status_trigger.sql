-- Who made a task's latest status change and why. The status event that records the
-- change is written by the triggers below from these columns, inside the statement
-- that changes the status: a transition is one statement (no transaction around an
-- update and an insert), and a status change never lands without its event.
ALTER TABLE tasks ADD COLUMN status_actor TEXT;
ALTER TABLE tasks ADD COLUMN status_reason TEXT;

CREATE TRIGGER tasks_status_created AFTER INSERT ON tasks
BEGIN
    INSERT INTO task_status_events (task_id, from_status, to_status, actor, reason, at)
    VALUES (NEW.id, NULL, NEW.status, NEW.status_actor, NEW.status_reason, NEW.created_at);
END;

-- Fires whenever an UPDATE names `status` in its SET list (only transitions do).
CREATE TRIGGER tasks_status_changed AFTER UPDATE OF status ON tasks
BEGIN
    INSERT INTO task_status_events (task_id, from_status, to_status, actor, reason, at)
    VALUES (NEW.id, OLD.status, NEW.status, NEW.status_actor, NEW.status_reason, NEW.updated_at);
END;
