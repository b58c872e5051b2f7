-- A re-run of a finished run (`dags trigger`/`dags test` on a date that ran, `tasks clear`, a
-- backfill's re-run) is a new attempt of it: its own number, conf, state and times. dag_run
-- holds the current attempt; dag_run_attempt keeps every attempt's record.
ALTER TABLE dag_run ADD COLUMN attempt BIGINT NOT NULL DEFAULT 1;

CREATE TABLE dag_run_attempt (
    dag_id     TEXT   NOT NULL,
    run_id     TEXT   NOT NULL,
    attempt    BIGINT NOT NULL,
    conf       TEXT   NOT NULL DEFAULT '{}',
    state      TEXT   NOT NULL,
    queued_at  BIGINT NOT NULL,
    started_at BIGINT,
    ended_at   BIGINT,
    PRIMARY KEY (dag_id, run_id, attempt),
    FOREIGN KEY (dag_id, run_id) REFERENCES dag_run (dag_id, run_id) ON DELETE CASCADE
);

-- Runs created before attempts existed: what is known of them is their first attempt.
INSERT INTO dag_run_attempt (dag_id, run_id, attempt, conf, state, queued_at, started_at, ended_at)
SELECT dag_id, run_id, 1, conf, state, created_at, started_at, ended_at FROM dag_run;
