-- Runs, task instances and their state history. Instants are BIGINT microseconds since
-- the Unix epoch (UTC) on both backends, so one set of queries serves both.
CREATE TABLE dag_run (
    dag_id              TEXT    NOT NULL,
    run_id              TEXT    NOT NULL,
    logical_date        BIGINT  NOT NULL,
    data_interval_start BIGINT  NOT NULL,
    data_interval_end   BIGINT  NOT NULL,
    run_type            TEXT    NOT NULL,
    state               TEXT    NOT NULL,
    conf                TEXT    NOT NULL DEFAULT '{}',
    dag_hash            TEXT    NOT NULL,
    created_at          BIGINT  NOT NULL,
    started_at          BIGINT,
    ended_at            BIGINT,
    PRIMARY KEY (dag_id, run_id),
    UNIQUE (dag_id, logical_date)
);
CREATE INDEX dag_run_by_state ON dag_run (state, dag_id);

CREATE TABLE task_instance (
    dag_id        TEXT    NOT NULL,
    run_id        TEXT    NOT NULL,
    task_id       TEXT    NOT NULL,
    operator      TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    try_number    BIGINT  NOT NULL DEFAULT 0,
    max_tries     BIGINT  NOT NULL,
    queued_at     BIGINT,
    started_at    BIGINT,
    ended_at      BIGINT,
    next_retry_at BIGINT,
    output        TEXT,
    error         TEXT,
    updated_at    BIGINT  NOT NULL,
    PRIMARY KEY (dag_id, run_id, task_id),
    FOREIGN KEY (dag_id, run_id) REFERENCES dag_run (dag_id, run_id) ON DELETE CASCADE
);
CREATE INDEX task_instance_by_state ON task_instance (state);

CREATE TABLE task_state_history (
    id         BIGSERIAL PRIMARY KEY,
    dag_id     TEXT    NOT NULL,
    run_id     TEXT    NOT NULL,
    task_id    TEXT    NOT NULL,
    try_number BIGINT  NOT NULL,
    from_state TEXT    NOT NULL,
    to_state   TEXT    NOT NULL,
    at         BIGINT  NOT NULL,
    reason     TEXT
);
CREATE INDEX task_state_history_by_run ON task_state_history (dag_id, run_id, id);
