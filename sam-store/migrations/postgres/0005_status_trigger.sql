-- Who made a task's latest status change and why (PostgreSQL). The status event that
-- records the change is written by the trigger below from these columns, inside the
-- statement that changes the status: a transition is one statement (no transaction
-- around an update and an insert), and a status change never lands without its event.
ALTER TABLE tasks ADD COLUMN status_actor TEXT, ADD COLUMN status_reason TEXT;

-- `SET search_path FROM CURRENT` pins the events table to this schema, whatever the
-- search path of the session whose statement fires the trigger.
CREATE FUNCTION sam_task_status_event() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO task_status_events (task_id, from_status, to_status, actor, reason, at)
        VALUES (NEW.id, NULL, NEW.status, NEW.status_actor, NEW.status_reason, NEW.created_at);
    ELSE
        INSERT INTO task_status_events (task_id, from_status, to_status, actor, reason, at)
        VALUES (NEW.id, OLD.status, NEW.status, NEW.status_actor, NEW.status_reason, NEW.updated_at);
    END IF;
    RETURN NULL;
END
$$;

-- `UPDATE OF status` fires whenever an UPDATE names `status` in its SET list (only
-- transitions do).
CREATE TRIGGER tasks_status_event AFTER INSERT OR UPDATE OF status ON tasks
FOR EACH ROW EXECUTE FUNCTION sam_task_status_event();
