"""Drives sluice's /api/v1 with the official Airflow 2 client (apache-airflow-client 2.x),
authenticating as Airflow 2 clients do (Basic auth: the sluice token is the password), its
response validation on, and prints what it saw as JSON for the Rust test to check.

Usage: python airflow2_client.py <base url> <token> <dag_id> <run_id>
Exits non-zero with the client's own error when a call or a response's validation fails.
"""
import json
import sys
import time

import airflow_client.client as af
from airflow_client.client.api import dag_api, dag_run_api, task_instance_api
from airflow_client.client.exceptions import ApiException
from airflow_client.client.model.clear_task_instances import ClearTaskInstances
from airflow_client.client.model.dag import DAG
from airflow_client.client.model.dag_run import DAGRun

base, token, dag_id, run_id = sys.argv[1:5]
api = base + "/api/v1"
report = {}


def wait_for_end(runs, deadline=90):
    until = time.time() + deadline
    while True:
        run = runs.get_dag_run(dag_id, run_id)
        if str(run.state) in ("success", "failed"):
            return run
        if time.time() > until:
            raise SystemExit(f"run {run_id} still {run.state} after {deadline}s")
        time.sleep(0.3)


with af.ApiClient(af.Configuration(host=api, username="someone", password="wrong-" + token)) as bad:
    try:
        dag_api.DAGApi(bad).get_dags()
        report["wrong_password_status"] = 200
    except ApiException as e:
        report["wrong_password_status"] = e.status

with af.ApiClient(af.Configuration(host=api, username="someone", password=token)) as client:
    dags = dag_api.DAGApi(client)
    pages, offset = [], 0
    while True:
        page = dags.get_dags(limit=1, offset=offset)
        pages.append([d.dag_id for d in page.dags])
        report["dags_total"] = page.total_entries
        offset += 1
        if offset >= page.total_entries:
            break
    report["dag_pages"] = pages
    dag = dags.get_dag(dag_id)
    report["dag"] = {"dag_id": dag.dag_id, "tags": [t.name for t in dag.tags]}
    report["paused_after_pause"] = dags.patch_dag(dag_id, DAG(is_paused=True), update_mask=["is_paused"]).is_paused
    report["paused_after_unpause"] = dags.patch_dag(dag_id, DAG(is_paused=False), update_mask=["is_paused"]).is_paused

    runs = dag_run_api.DAGRunApi(client)
    triggered = runs.post_dag_run(dag_id, DAGRun(dag_run_id=run_id, conf={"who": "airflow2"}, note="from the Airflow 2 client"))
    report["triggered"] = {"dag_run_id": triggered.dag_run_id, "state": str(triggered.state), "conf": triggered.conf, "note": triggered.get("note")}
    run = wait_for_end(runs)
    report["final_state"] = str(run.state)
    listed = runs.get_dag_runs(dag_id, limit=1, offset=0)
    report["runs_page"] = {"total": listed.total_entries, "ids": [r.dag_run_id for r in listed.dag_runs]}

    tis = task_instance_api.TaskInstanceApi(client)
    ti_pages = []
    for offset in range(3):
        page = tis.get_task_instances(dag_id, run_id, limit=1, offset=offset)
        ti_pages.append([(t.task_id, str(t.state), t.try_number) for t in page.task_instances])
        report["tis_total"] = page.total_entries
    report["ti_pages"] = ti_pages

    log = tis.get_log(dag_id, run_id, "extract", 1)
    report["log"] = {"content": log.content, "continuation_token": log.continuation_token}

    cleared = dags.post_clear_task_instances(
        dag_id, ClearTaskInstances(dag_run_id=run_id, task_ids=["load"], dry_run=False, only_failed=False)
    )
    report["cleared"] = [t.task_id for t in cleared.task_instances]
    run = wait_for_end(runs)
    report["state_after_clear"] = str(run.state)
    report["load_after_clear"] = tis.get_task_instance(dag_id, run_id, "load").try_number

print(json.dumps(report))
