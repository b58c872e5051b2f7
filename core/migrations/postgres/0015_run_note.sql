-- A note on a run, as Airflow keeps one (set when it is triggered or its tasks are cleared
-- through the API): free text for the people reading the run, never read by sluice itself.
ALTER TABLE dag_run ADD COLUMN note TEXT;
