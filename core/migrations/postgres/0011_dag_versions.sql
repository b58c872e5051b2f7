-- A run executes the DAG version it was created with (the DAG file and every file its config
-- names, such as SQL files), whatever the folder holds when the run starts or resumes. Each
-- version is stored once, by content hash; `dag_run.dag_hash` names the run's version and
-- each attempt records the version it ran (a new attempt takes the DAG as loaded then).
CREATE TABLE dag_version (
    dag_id     TEXT   NOT NULL,
    version    TEXT   NOT NULL,
    file       TEXT   NOT NULL,
    source     TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (dag_id, version)
);

ALTER TABLE dag_run_attempt ADD COLUMN dag_hash TEXT;

-- What is known of earlier attempts: the run's version.
UPDATE dag_run_attempt SET dag_hash = (
    SELECT r.dag_hash FROM dag_run r
    WHERE r.dag_id = dag_run_attempt.dag_id AND r.run_id = dag_run_attempt.run_id
);
