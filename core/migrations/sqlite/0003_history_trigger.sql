-- Every state change writes its history row inside the same statement (a trigger), so a
-- transition is one compare-and-set UPDATE instead of a four-step transaction.
ALTER TABLE task_instance ADD COLUMN last_reason TEXT;

CREATE TRIGGER task_state_history_on_change AFTER UPDATE OF state ON task_instance
BEGIN
    INSERT INTO task_state_history (dag_id, run_id, task_id, try_number, from_state, to_state, at, reason)
    VALUES (NEW.dag_id, NEW.run_id, NEW.task_id, NEW.try_number, OLD.state, NEW.state, NEW.updated_at, NEW.last_reason);
END;
