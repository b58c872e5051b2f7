-- Which batched write last changed a task instance: a batch of compare-and-set updates
-- returns only how many rows moved, and when that is fewer than it sent, this marker tells
-- exactly which of its changes landed (identical changes racing from two writers included).
ALTER TABLE task_instance ADD COLUMN last_write BIGINT;

-- Nothing filters task instances by state alone (runs are found through dag_run, instances by
-- their run), while every transition had to move the row's entry in this index: a third of
-- the cost of a batched transition on a busy SQLite store.
DROP INDEX task_instance_by_state;
