-- Telemetry aggregates that could not be attributed to an active prosthesis (docs/pipeline.md).
-- A re-run of a window replaces its rows under FINAL (latest quarantined_at wins).
CREATE TABLE IF NOT EXISTS etl_quarantine
(
    dag_id         String,
    run_id         String,
    window_start   DateTime,
    reason         String,
    chip_id        String,
    record         String,
    quarantined_at DateTime
)
ENGINE = ReplacingMergeTree(quarantined_at)
PARTITION BY toYYYYMM(window_start)
ORDER BY (dag_id, window_start, reason, chip_id)
