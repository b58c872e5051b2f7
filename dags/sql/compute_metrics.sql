-- One row per chip with telemetry in the interval and an active prosthesis (docs/pipeline.md).
-- Tables are the upstream tasks' outputs, named by task id.
SELECT c.user_id,
       t.chip_id,
       c.model_name,
       c.region,
       t.window_start,
       t.window_end,
       t.events,
       t.errors,
       t.cycles,
       CAST(t.errors AS DOUBLE) / CAST(t.events AS DOUBLE) AS error_rate,
       CAST(t.cycles AS DOUBLE) / (CAST(c.rated_cycles_per_day AS DOUBLE) * t.window_seconds / 86400.0) AS utilization,
       t.avg_battery_pct,
       t.p95_latency_ms,
       t.last_event_at,
       CASE
           WHEN CAST(t.errors AS DOUBLE) / CAST(t.events AS DOUBLE) >= 0.10 THEN 'critical'
           WHEN CAST(t.errors AS DOUBLE) / CAST(t.events AS DOUBLE) >= 0.02 THEN 'warn'
           ELSE 'ok'
       END AS health
FROM extract_telemetry t
JOIN extract_crm c ON t.chip_id = c.chip_id
WHERE c.active
