-- Aggregates that cannot be attributed are kept, with the reason (docs/pipeline.md): chips the CRM
-- does not know, and chips whose prosthesis is inactive.
SELECT t.dag_id,
       t.run_id,
       t.window_start,
       CASE WHEN c.user_id IS NULL THEN 'unknown_chip' ELSE 'inactive_chip' END AS reason,
       t.chip_id,
       t.record,
       t.quarantined_at
FROM extract_telemetry t
LEFT JOIN extract_crm c ON t.chip_id = c.chip_id
WHERE c.user_id IS NULL OR NOT c.active
