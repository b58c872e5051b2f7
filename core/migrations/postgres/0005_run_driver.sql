-- Who drives a run, and until when (a lease renewed while driving): a second process never
-- drives the same run, and a dead driver's runs are taken over once its lease ends.
ALTER TABLE dag_run ADD COLUMN driver TEXT;
ALTER TABLE dag_run ADD COLUMN driver_lease_until BIGINT;
