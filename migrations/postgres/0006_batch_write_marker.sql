-- Which batched write last changed a task instance: a batch of compare-and-set updates
-- returns only how many rows moved, and when that is fewer than it sent, this marker tells
-- exactly which of its changes landed (identical changes racing from two writers included).
ALTER TABLE task_instance ADD COLUMN last_write BIGINT;
