-- ClickHouse target of the metrics (docs/pipeline.md). ReplacingMergeTree(_version): a re-run of a
-- window writes a larger _version and the latest row per key wins under FINAL.
CREATE TABLE IF NOT EXISTS user_prosthesis_stats
(
    user_id         UInt64,
    chip_id         String,
    model_name      String,
    region          String,
    window_start    DateTime,
    window_end      DateTime,
    events          UInt64,
    errors          UInt64,
    cycles          UInt64,
    error_rate      Float64,
    utilization     Float64,
    avg_battery_pct Nullable(Float64),
    p95_latency_ms  Nullable(Float64),
    last_event_at   DateTime,
    health          String,
    _version        UInt64,
    _deleted        UInt8
)
ENGINE = ReplacingMergeTree(_version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (user_id, chip_id, window_start)
