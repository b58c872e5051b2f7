"""Drives sluice's /api/v2 with the official Airflow 3 client (apache-airflow-client 3.x),
its response validation on, and prints what it saw as JSON for the Rust test to check.

Usage: python airflow3_client.py <base url> <token> <dag_id> <run_id>
Exits non-zero with the client's own error when a call or a response's validation fails.
"""
import json
import sys
import time

import airflow_client.client as af
from airflow_client.client.api import dag_api, dag_run_api, monitor_api, task_instance_api, version_api
from airflow_client.client.exceptions import ApiException
from airflow_client.client.models import (
    ClearTaskInstancesBody,
    ClearTaskInstancesBodyTaskIdsInner,
    DAGPatchBody,
    TriggerDAGRunPostBody,
)

base, token, dag_id, run_id = sys.argv[1:5]
report = {}


def wait_for_end(runs, deadline=90):
    until = time.time() + deadline
    while True:
        run = runs.get_dag_run(dag_id, run_id)
        if run.state.value in ("success", "failed"):
            return run
        if time.time() > until:
            raise SystemExit(f"run {run_id} still {run.state.value} after {deadline}s")
        time.sleep(0.3)


with af.ApiClient(af.Configuration(host=base, access_token="wrong-" + token)) as bad:
    try:
        dag_api.DAGApi(bad).get_dags()
        report["wrong_token_status"] = 200
    except ApiException as e:
        report["wrong_token_status"] = e.status

with af.ApiClient(af.Configuration(host=base, access_token=token)) as client:
    report["version"] = version_api.VersionApi(client).get_version().version
    health = monitor_api.MonitorApi(client).get_health()
    report["health"] = {"metadatabase": health.metadatabase.status, "scheduler": health.scheduler.status}

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
    report["dag"] = {"dag_id": dag.dag_id, "timetable_summary": dag.timetable_summary, "tags": [t.name for t in dag.tags], "fileloc": dag.fileloc}
    report["paused_after_pause"] = dags.patch_dag(dag_id, DAGPatchBody(is_paused=True)).is_paused
    report["paused_in_list"] = [d.dag_id for d in dags.get_dags(paused=True).dags]
    report["paused_after_unpause"] = dags.patch_dag(dag_id, DAGPatchBody(is_paused=False)).is_paused

    runs = dag_run_api.DagRunApi(client)
    body = TriggerDAGRunPostBody(dag_run_id=run_id, logical_date=None, conf={"who": "airflow3"}, note="from the Airflow 3 client")
    triggered = runs.trigger_dag_run(dag_id, body)
    report["triggered"] = {"dag_run_id": triggered.dag_run_id, "state": triggered.state.value, "conf": triggered.conf, "note": triggered.note, "run_type": triggered.run_type.value}
    run = wait_for_end(runs)
    report["final_state"] = run.state.value
    listed = runs.get_dag_runs(dag_id, limit=1, offset=0)
    report["runs_page"] = {"total": listed.total_entries, "ids": [r.dag_run_id for r in listed.dag_runs]}

    tis = task_instance_api.TaskInstanceApi(client)
    ti_pages = []
    for offset in range(3):
        page = tis.get_task_instances(dag_id, run_id, limit=1, offset=offset)
        ti_pages.append([(t.task_id, t.state.value if t.state else None, t.try_number) for t in page.task_instances])
        report["tis_total"] = page.total_entries
    report["ti_pages"] = ti_pages
    report["tis_by_state"] = {
        state: tis.get_task_instances(dag_id, run_id, state=[state]).total_entries
        for state in ("success", "failed", "skipped", "none")
    }
    report["runs_by_state"] = {
        state: runs.get_dag_runs(dag_id, state=[state]).total_entries for state in ("success", "failed")
    }

    log = tis.get_log(dag_id, run_id, "extract", 1)
    lines = log.content.actual_instance
    more = tis.get_log(dag_id, run_id, "extract", 1, token=log.continuation_token)
    report["log"] = {
        "lines": [l if isinstance(l, str) else l.event for l in lines],
        "rest_lines": len(more.content.actual_instance),
    }

    dry = tis.post_clear_task_instances(dag_id, ClearTaskInstancesBody(dag_run_id=run_id, task_ids=[ClearTaskInstancesBodyTaskIdsInner("load")], only_failed=False))
    report["dry_run_cleared"] = [t.task_id for t in dry.task_instances]
    cleared = tis.post_clear_task_instances(
        dag_id, ClearTaskInstancesBody(dag_run_id=run_id, task_ids=[ClearTaskInstancesBodyTaskIdsInner("load")], dry_run=False, only_failed=False)
    )
    report["cleared"] = [t.task_id for t in cleared.task_instances]
    run = wait_for_end(runs)
    report["state_after_clear"] = run.state.value
    report["load_after_clear"] = tis.get_task_instance(dag_id, run_id, "load").try_number

print(json.dumps(report))
