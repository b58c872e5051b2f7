-- Process groups a running try started (a shell command and what it spawned), so that whoever
-- resumes a run after its process died stops them before the retry starts. A row lives
-- while its process group does; one left behind belongs to a try whose process died.
CREATE TABLE task_process (
    dag_id      TEXT   NOT NULL,
    run_id      TEXT   NOT NULL,
    task_id     TEXT   NOT NULL,
    try_number  BIGINT NOT NULL,
    host        TEXT   NOT NULL,
    pgid        BIGINT NOT NULL,
    start_ticks BIGINT NOT NULL,
    started_at  BIGINT NOT NULL,
    PRIMARY KEY (dag_id, run_id, task_id, host, pgid),
    FOREIGN KEY (dag_id, run_id) REFERENCES dag_run (dag_id, run_id) ON DELETE CASCADE
);
