-- The outbox of notifications (failure, retry, success, SLA miss): queued when their event
-- is recorded, under an id made of the event and the channel (queuing again changes nothing),
-- and sent by a scheduler, which records the outcome and tries a failed send again later.
CREATE TABLE notification (
    id          TEXT   NOT NULL PRIMARY KEY,
    dag_id      TEXT   NOT NULL,
    run_id      TEXT   NOT NULL,
    channel     TEXT   NOT NULL,
    event       TEXT   NOT NULL,
    -- The rendered message (JSON), addressed by connection id: no secret is stored.
    message     TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    attempts    BIGINT NOT NULL DEFAULT 0,
    next_at     BIGINT NOT NULL,
    sent_at     BIGINT,
    gave_up_at  BIGINT,
    last_error  TEXT,
    FOREIGN KEY (dag_id, run_id) REFERENCES dag_run (dag_id, run_id) ON DELETE CASCADE
);
-- What is still to send, by when it is due (sent and given-up rows are not indexed).
CREATE INDEX notification_due ON notification (next_at) WHERE sent_at IS NULL AND gave_up_at IS NULL;
CREATE INDEX notification_run ON notification (dag_id, run_id);

-- When a run was found unfinished past its SLA (its data interval's end plus the DAG's `sla`):
-- set once, by whichever scheduler sees it first, which then queues the `on_sla_miss` notices.
ALTER TABLE dag_run ADD COLUMN sla_missed_at BIGINT;
