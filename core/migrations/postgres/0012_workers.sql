-- Workers: processes on any machine that claim queued tries from the store and run them.
-- A try queued for workers names its queue (NULL: it runs in the process driving the run);
-- the try that runs records the worker and host that ran it and the worker's heartbeat.
ALTER TABLE task_instance ADD COLUMN queue TEXT;
ALTER TABLE task_instance ADD COLUMN worker TEXT;
ALTER TABLE task_instance ADD COLUMN hostname TEXT;
ALTER TABLE task_instance ADD COLUMN heartbeat_at BIGINT;
-- The pool whose slots its tries take, fixed when the run is created (from its DAG version).
ALTER TABLE task_instance ADD COLUMN pool TEXT;

-- A DAG's max_active_tasks as its runs' drivers record it: a worker's claim takes the DAG's
-- row lock and counts its running tries, as for pools.
ALTER TABLE dag ADD COLUMN max_active_tasks BIGINT;

-- Pool sizes as the schedulers were given them (SLUICE_POOLS): a worker's claim takes a
-- pool's row lock and counts its running tries, so no pool is exceeded across workers.
CREATE TABLE pool (
    name  TEXT   PRIMARY KEY,
    slots BIGINT NOT NULL
);

-- No index on state (or partial on it) is added for the claims: every transition would
-- then maintain it, and on PostgreSQL lose its heap-only update (the in-process executor's
-- throughput fell by a quarter with two such indexes). Claims and heartbeats scan.

-- Each worker's sign of life and what it serves.
CREATE TABLE worker (
    name         TEXT   PRIMARY KEY,
    hostname     TEXT   NOT NULL,
    pid          BIGINT NOT NULL,
    queues       TEXT   NOT NULL,
    concurrency  BIGINT NOT NULL,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);
