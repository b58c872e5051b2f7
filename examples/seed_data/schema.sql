-- The reference pipeline's sources (docs/pipeline.md). CRM tables live in the `crm` database,
-- telemetry in the `telemetry` database; seed_data creates them if missing.
-- @crm
CREATE TABLE IF NOT EXISTS customers (
    id         BIGINT PRIMARY KEY,
    user_id    BIGINT NOT NULL UNIQUE,
    full_name  TEXT NOT NULL,
    region     TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS prosthesis_models (
    id                   INT PRIMARY KEY,
    name                 TEXT NOT NULL,
    kind                 TEXT NOT NULL,
    rated_cycles_per_day INT NOT NULL,
    updated_at           TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS prostheses (
    id          BIGINT PRIMARY KEY,
    chip_id     TEXT NOT NULL UNIQUE,
    customer_id BIGINT NOT NULL REFERENCES customers,
    model_id    INT NOT NULL REFERENCES prosthesis_models,
    fitted_at   TIMESTAMPTZ NOT NULL,
    active      BOOLEAN NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);
-- @telemetry
CREATE TABLE IF NOT EXISTS telemetry_events (
    chip_id     TEXT NOT NULL,
    ts          TIMESTAMPTZ NOT NULL,
    event_type  TEXT NOT NULL,
    is_error    BOOLEAN NOT NULL,
    error_code  TEXT,
    cycles      INT NOT NULL,
    battery_pct REAL,
    latency_ms  REAL
);
CREATE INDEX IF NOT EXISTS telemetry_events_ts ON telemetry_events (ts);
