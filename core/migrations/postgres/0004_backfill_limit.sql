-- A backfill may cap how many of its runs are active at once (`dags backfill --max-active-runs`).
ALTER TABLE dag_run ADD COLUMN backfill_max_active_runs BIGINT;
