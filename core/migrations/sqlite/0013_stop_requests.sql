-- Requests to stop a running run, or one task instance of it, from the CLI, the API or the UI.
-- The run's driver, in whichever process drives it, acts on a request and removes it; one left
-- by a driver that died is acted on by the driver that resumes the run.
CREATE TABLE stop_request (
    dag_id       TEXT   NOT NULL,
    run_id       TEXT   NOT NULL,
    -- '' stops the whole run.
    task_id      TEXT   NOT NULL,
    requested_by TEXT   NOT NULL,
    requested_at BIGINT NOT NULL,
    -- The state the run ends in when the whole run is stopped (failed or cancelled).
    run_ends     TEXT   NOT NULL,
    PRIMARY KEY (dag_id, run_id, task_id),
    FOREIGN KEY (dag_id, run_id) REFERENCES dag_run (dag_id, run_id) ON DELETE CASCADE
);
