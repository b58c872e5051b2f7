-- Telemetry of the run's data interval [S, E), aggregated per chip in the database
-- (docs/pipeline.md). Template values reach PostgreSQL as bind parameters, never as SQL text.
SELECT chip_id,
       count(*)                                                   AS events,
       count(*) FILTER (WHERE is_error)                           AS errors,
       sum(cycles)                                                AS cycles,
       avg(battery_pct)                                           AS avg_battery_pct,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms)  AS p95_latency_ms,
       date_trunc('second', max(ts))                              AS last_event_at,
       {{ data_interval_start }}                                  AS window_start,
       {{ data_interval_end }}                                    AS window_end,
       extract(epoch FROM {{ data_interval_end }} - {{ data_interval_start }})::float8 AS window_seconds,
       {{ dag_id }}                                               AS dag_id,
       {{ run_id }}                                               AS run_id,
       date_trunc('second', now())                                AS quarantined_at,
       json_build_object(
           'chip_id', chip_id,
           'events', count(*),
           'errors', count(*) FILTER (WHERE is_error),
           'cycles', sum(cycles),
           'avg_battery_pct', avg(battery_pct),
           'p95_latency_ms', percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms),
           'last_event_at', max(ts)
       )::text                                                    AS record
FROM telemetry_events
WHERE ts >= {{ data_interval_start }}
  AND ts <  {{ data_interval_end }}
GROUP BY chip_id
