-- The delivery ledger: what an item-by-item task (http_webhook's for_each) delivered in each
-- attempt of a run, so a retry of the task sends only the rest, and what failed, with why.
CREATE TABLE delivery (
    dag_id     TEXT   NOT NULL,
    run_id     TEXT   NOT NULL,
    attempt    BIGINT NOT NULL,
    task_id    TEXT   NOT NULL,
    item       TEXT   NOT NULL,
    state      TEXT   NOT NULL,
    attempts   BIGINT NOT NULL,
    detail     TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (dag_id, run_id, attempt, task_id, item),
    FOREIGN KEY (dag_id, run_id) REFERENCES dag_run (dag_id, run_id) ON DELETE CASCADE
);
