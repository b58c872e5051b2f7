-- Scheduler state: paused DAGs, and heartbeats of running schedulers (so `dags trigger` can
-- tell whether anyone will pick a run up).
CREATE TABLE dag (
    dag_id     TEXT   PRIMARY KEY,
    is_paused  BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL
);

CREATE TABLE scheduler_heartbeat (
    scheduler_id TEXT   PRIMARY KEY,
    hostname     TEXT   NOT NULL,
    pid          BIGINT NOT NULL,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);
