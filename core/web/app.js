// sluice status UI: plain DOM, no build step. Every user-supplied string goes through
// textContent, never through HTML parsing, so DAG ids, task ids, conf and log lines are escaped.
"use strict";
const sluice = (() => {
  const $ = (id) => document.getElementById(id);
  const el = (tag, props = {}, ...children) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v); else node.setAttribute(k, v);
    }
    for (const child of children) node.append(child);
    return node;
  };
  // The token lives in this tab only (sessionStorage): closing the tab forgets it, and no
  // other page of the origin can read it later from disk.
  const tokenInput = () => $("token");
  const TOKEN_KEY = "sluice-token";
  let onToken = () => {};
  function setupToken(refresh) {
    localStorage.removeItem(TOKEN_KEY); // earlier versions kept it on disk
    const input = tokenInput();
    input.value = sessionStorage.getItem(TOKEN_KEY) || "";
    onToken = refresh || (() => {});
    input.addEventListener("change", () => {
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      show("");
      onToken();
    });
  }
  const authHeaders = () => {
    const token = sessionStorage.getItem(TOKEN_KEY);
    return token ? { "Authorization": "Bearer " + token } : {};
  };
  async function api(path, options = {}) {
    const headers = Object.assign({ "Accept": "application/json" }, authHeaders(), options.headers || {});
    if (options.body) headers["Content-Type"] = "application/json";
    const response = await fetch("/api/v1" + path, Object.assign({}, options, { headers }));
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = (await response.json()).detail || detail; } catch (_) {}
      if (response.status === 401) {
        // Ask once: the field is in the header; the page reloads its data when it is filled.
        tokenInput().focus();
        detail = "this server needs an API token: enter it above (" + detail + ")";
      }
      const error = new Error(response.status + ": " + detail);
      error.status = response.status;
      throw error;
    }
    return options.raw ? response.text() : response.json();
  }
  const show = (message) => { $("message").textContent = message || ""; };
  const cell = (state, title, onclick) => el("span", { class: "cell " + (state || ""), title: title, onclick: onclick || (() => {}) });
  const readable = (path) => { try { return decodeURIComponent(path); } catch (_) { return path; } };
  const when = (t) => t ? t.replace("T", " ").replace(/\.\d+Z$/, "Z") : "-";
  // "11-23 10:00" (UTC): what a run column is labelled with.
  const short = (t) => t ? t.slice(5, 16).replace("T", " ") : "";
  const seconds = (a, b) => (a && b) ? (Date.parse(b) - Date.parse(a)) / 1000 : null;
  const fmtDuration = (s) => s === null || s === undefined ? "" : s < 1 ? Math.round(s * 1000) + " ms" : s < 60 ? s.toFixed(1) + " s" : s < 3600 ? Math.floor(s / 60) + " min " + Math.round(s % 60) + " s" : (s / 3600).toFixed(1) + " h";
  const count = (n) => Number(n).toLocaleString("en-US");
  // What a task moved, from its recorded output: rows, deliveries sent and failed.
  function moved(ti) {
    const out = ti.output || {};
    const v = out.values || {};
    if (v.delivered !== undefined) return count(v.delivered) + " sent" + (v.failed ? " · " + count(v.failed) + " failed" : "");
    if (Array.isArray(v.checks)) return v.passed + "/" + v.checks.length + " checks passed" + (v.warned ? " · " + v.warned + " warned" : "");
    if (v.rows !== undefined) return count(v.rows) + " rows";
    if (out.table && out.table.rows !== undefined && out.table.rows !== null) return count(out.table.rows) + " rows";
    return "";
  }
  function runLabel(run) {
    const interval = run.data_interval_start === run.data_interval_end ? short(run.logical_date) : short(run.data_interval_start) + "–" + run.data_interval_end.slice(11, 16);
    const took = seconds(run.start_date, run.end_date || (run.state === "running" ? new Date().toISOString() : null));
    const facts = [fmtDuration(took) + (run.state === "running" ? " so far" : ""), run.attempt > 1 ? "attempt " + run.attempt : ""].filter(Boolean).join(" · ");
    return [interval, facts];
  }

  async function dagList() {
    async function refresh() {
      try {
        const data = await api("/dags?limit=1000");
        const body = $("dags").querySelector("tbody");
        body.replaceChildren();
        for (const dag of data.dags) {
          const paused = el("input", { type: "checkbox", title: "pause / unpause" });
          paused.checked = dag.is_paused;
          paused.addEventListener("change", async () => {
            try { await api("/dags/" + encodeURIComponent(dag.dag_id), { method: "PATCH", body: JSON.stringify({ is_paused: paused.checked }) }); show(""); }
            catch (e) { paused.checked = !paused.checked; show("Could not change " + dag.dag_id + ": " + e.message); }
          });
          const recent = el("span");
          for (const run of dag.recent_runs.slice().reverse()) recent.append(cell(run.state, run.dag_run_id + ": " + run.state));
          body.append(el("tr", {},
            el("td", {}, el("a", { href: "/dags/" + encodeURIComponent(dag.dag_id), text: dag.dag_id })),
            el("td", { text: dag.schedule_interval ? dag.schedule_interval.value : "none" }),
            el("td", {}, paused),
            el("td", { text: dag.last_run ? dag.last_run.state + " · " + when(dag.last_run.logical_date) : "-" }),
            el("td", { text: when(dag.next_dagrun_data_interval_start) }),
            el("td", {}, recent)));
        }
        const errors = await api("/importErrors");
        $("errors").textContent = errors.total_entries ? errors.total_entries + " error(s) in DAG files: " + errors.import_errors.map((e) => e.filename + ": " + e.stack_trace).join("; ") : "";
        await audit();
      } catch (e) { show(e.message); }
    }
    // Who changed what: shown to admins only (others get 403 and see nothing).
    async function audit() {
      try {
        const log = await api("/auditLog?limit=20");
        const body = $("audit").querySelector("tbody");
        body.replaceChildren(...log.entries.map((e) => el("tr", {},
          el("td", { text: when(e.at) }), el("td", { text: e.actor + " (" + e.role + ")" }),
          el("td", { text: e.method + " " + readable(e.path) }), el("td", { text: String(e.status) }), el("td", { text: e.remote || "-" }))));
        $("audit-section").hidden = false;
      } catch (e) { $("audit-section").hidden = true; }
    }
    setupToken(refresh);
    await refresh();
    live(refresh);
  }

  function drawGraph(dag, states) {
    // Layered left to right: a task's column is its longest path from a root.
    const layer = {};
    for (const t of dag.tasks) layer[t.task_id] = Math.max(0, ...t.upstream_task_ids.map((u) => layer[u] + 1));
    const columns = {};
    for (const t of dag.tasks) (columns[layer[t.task_id]] = columns[layer[t.task_id]] || []).push(t.task_id);
    const pos = {};
    const w = 170, h = 44;
    let height = 0;
    for (const [col, ids] of Object.entries(columns)) ids.forEach((id, row) => { pos[id] = [20 + col * w, 20 + row * h]; height = Math.max(height, 60 + row * h); });
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("width", 40 + Object.keys(columns).length * w);
    svg.setAttribute("height", height);
    const colour = { success: "#2e9e4f", failed: "#d64541", running: "#2f7ed8", up_for_retry: "#e8a33d", upstream_failed: "#f08080", skipped: "#c8a2e8", cancelled: "#555" };
    for (const t of dag.tasks) for (const d of t.downstream_task_ids) {
      const line = document.createElementNS(ns, "line");
      const [x1, y1] = pos[t.task_id], [x2, y2] = pos[d];
      Object.entries({ x1: x1 + 130, y1: y1 + 13, x2: x2, y2: y2 + 13, stroke: "#9aa5b1" }).forEach(([k, v]) => line.setAttribute(k, v));
      svg.append(line);
    }
    for (const t of dag.tasks) {
      const [x, y] = pos[t.task_id];
      const rect = document.createElementNS(ns, "rect");
      Object.entries({ x, y, width: 130, height: 26, rx: 5, fill: "#fff", stroke: colour[states[t.task_id]] || "#9aa5b1", "stroke-width": 3 }).forEach(([k, v]) => rect.setAttribute(k, v));
      const label = document.createElementNS(ns, "text");
      label.setAttribute("x", x + 8); label.setAttribute("y", y + 17);
      label.textContent = t.task_id;
      svg.append(rect, label);
    }
    $("graph").replaceChildren(svg);
  }

  // The selected run's tries on one time axis: which task waited, which took long.
  function drawGantt(run, tis, dag) {
    const box = $("gantt");
    box.replaceChildren();
    if (!run) return;
    const started = tis.filter((t) => t.start_date);
    if (!started.length) { box.append(el("p", { class: "muted", text: run.dag_run_id + " has not started a task yet" })); return; }
    const now = new Date().toISOString();
    const t0 = Math.min(...started.map((t) => Date.parse(t.start_date)));
    const t1 = Math.max(...started.map((t) => Date.parse(t.end_date || now)), t0 + 1);
    const span = t1 - t0;
    box.append(el("div", { class: "muted", text: run.dag_run_id + " · " + fmtDuration(span / 1000) + " from the first try's start to the last one's end" }));
    for (const task of dag.tasks) {
      const ti = tis.find((t) => t.task_id === task.task_id);
      const bar = el("div", { class: "bar " + (ti ? ti.state : "") });
      if (ti && ti.start_date) {
        const left = (Date.parse(ti.start_date) - t0) / span * 100;
        const width = Math.max((Date.parse(ti.end_date || now) - Date.parse(ti.start_date)) / span * 100, 0.5);
        bar.style.left = left + "%";
        bar.style.width = width + "%";
        bar.title = task.task_id + ": " + (ti.state || "") + " · " + fmtDuration(ti.duration);
      } else {
        bar.style.width = "0";
      }
      const facts = ti ? [fmtDuration(ti.duration), moved(ti)].filter(Boolean).join(" · ") : "";
      box.append(el("div", { class: "gantt-row" },
        el("span", { class: "gantt-task", text: task.task_id }),
        el("span", { class: "gantt-track" }, bar),
        el("span", { class: "facts", text: facts })));
    }
  }

  async function dagPage() {
    const dagId = decodeURIComponent(location.pathname.split("/").pop());
    $("title").textContent = dagId;
    $("crumb").textContent = "DAGs / " + dagId;
    let followed = null;
    let follow = null;
    let selectedRun = null;
    const act = async (path, body, what) => {
      try { await api(path, { method: body.new_state || body.state ? "PATCH" : "POST", body: JSON.stringify(body) }); show(""); refresh(); }
      catch (e) { show(what + " refused: " + e.message); }
    };
    const unfinished = (state) => ["pending", "queued", "running", "up_for_retry"].includes(state);
    // A followed log is read in pieces from where the last one ended: a long log is never
    // fetched twice, and the first view shows its tail.
    let logOffset = null;
    async function showLog(runId, taskId, tryNumber, state) {
      const same = followed && followed[0] === runId && followed[1] === taskId && followed[2] === tryNumber;
      if (!same) logOffset = null;
      followed = [runId, taskId, tryNumber, state];
      $("details").hidden = false;
      $("details-title").textContent = taskId + " · " + runId + " · try " + tryNumber + (state ? " · " + state : "");
      const ti = "/dags/" + encodeURIComponent(dagId) + "/dagRuns/" + encodeURIComponent(runId) + "/taskInstances/" + encodeURIComponent(taskId);
      // A task still to run or running can be stopped; a finished one marked or cleared.
      $("stop-task").hidden = !unfinished(state);
      for (const id of ["mark-success", "mark-failed", "clear"]) $(id).hidden = unfinished(state);
      $("stop-task").onclick = () => act(ti, { new_state: "failed" }, "Stop");
      $("mark-success").onclick = () => act(ti, { new_state: "success" }, "Mark success");
      $("mark-failed").onclick = () => act(ti, { new_state: "failed" }, "Mark failed");
      $("clear").onclick = () => act("/dags/" + encodeURIComponent(dagId) + "/clearTaskInstances", { dag_run_id: runId, task_ids: [taskId], include_downstream: true }, "Clear");
      // A running try's log grows without other changes: follow it once a second until it ends.
      clearInterval(follow);
      if (state === "running") follow = setInterval(() => showLog(...followed), 1000);
      try {
        if (logOffset === null) {
          const chunk = await api(ti + "/logs/" + tryNumber);
          const earlier = chunk.offset > 0 ? "… " + chunk.offset + " earlier bytes not shown\n" : "";
          $("log").textContent = earlier + (chunk.content || "(empty)");
          logOffset = chunk.next_offset;
        } else {
          const chunk = await api(ti + "/logs/" + tryNumber + "?offset=" + logOffset);
          if (chunk.content) $("log").textContent += chunk.content;
          logOffset = chunk.next_offset;
        }
      } catch (e) { $("log").textContent = e.message; logOffset = null; }
      // Item-by-item tasks (a webhook per user) have a delivery ledger: what this attempt delivered and what failed.
      try {
        const ledger = await api(ti + "/deliveries?limit=5");
        const failed = ledger.items.filter((d) => !d.delivered).map((d) => d.item + ": " + (d.detail || "failed"));
        $("deliveries").hidden = ledger.delivered + ledger.failed === 0;
        $("deliveries").textContent = "deliveries of attempt " + ledger.attempt + ": " + ledger.delivered + " delivered, " + ledger.failed + " failed" + (failed.length ? " · " + failed.join(" · ") : "");
      } catch (e) { $("deliveries").hidden = true; }
    }
    async function refresh() {
      try {
        const dag = await api("/dags/" + encodeURIComponent(dagId));
        $("summary").textContent = (dag.description || "") + " · schedule " + (dag.schedule_interval ? dag.schedule_interval.value : "none") + " · " + dag.timezone + (dag.is_paused ? " · paused" : "");
        $("pause").textContent = dag.is_paused ? "Unpause" : "Pause";
        $("pause").onclick = async () => {
          try { await api("/dags/" + encodeURIComponent(dagId), { method: "PATCH", body: JSON.stringify({ is_paused: !dag.is_paused }) }); show(""); refresh(); }
          catch (e) { show(e.message); }
        };
        // One request for the whole grid: the latest runs and all their task instances.
        const grid = await api("/dags/" + encodeURIComponent(dagId) + "/grid?limit=25");
        const runs = grid.dag_runs;
        const head = el("tr", {}, el("th", { text: "task" }));
        const tis = {};
        for (const run of runs) {
          const attempt = run.attempt > 1 ? " · attempt " + run.attempt : "";
          const [interval, facts] = runLabel(run);
          // Failing windows and missed SLAs stand out: the whole column header says so.
          const classes = "runhead" + (run.state === "failed" ? " run-failed" : "") + (run.sla_missed_at ? " run-sla" : "");
          head.append(el("th", { class: classes, title: run.dag_run_id + attempt },
            cell(run.state, run.dag_run_id + attempt + ": " + run.state + " (click: show in the graph and timeline)", () => { selectedRun = run.dag_run_id; refresh(); }),
            el("div", { class: "interval", text: interval }),
            el("div", { class: "facts", text: facts }),
            run.sla_missed_at ? el("div", { class: "sla", text: "SLA missed" }) : ""));
          tis[run.dag_run_id] = [];
        }
        for (const ti of grid.task_instances) (tis[ti.dag_run_id] = tis[ti.dag_run_id] || []).push(ti);
        $("grid").querySelector("thead").replaceChildren(head);
        const body = $("grid").querySelector("tbody");
        body.replaceChildren();
        for (const task of dag.tasks) {
          const row = el("tr", {}, el("td", { text: task.task_id }));
          for (const run of runs) {
            const ti = (tis[run.dag_run_id] || []).find((t) => t.task_id === task.task_id);
            const state = ti ? ti.state : "";
            const open = () => ti && ti.try_number > 0 ? showLog(run.dag_run_id, task.task_id, ti.try_number, ti.state) : show(task.task_id + " has not run in " + run.dag_run_id);
            // Under each square: how long the try took, what it moved, and its try if not the first.
            const facts = ti ? [fmtDuration(ti.duration), moved(ti), ti.try_number > 1 ? "try " + ti.try_number + "/" + ti.max_tries : ""].filter(Boolean).join(" · ") : "";
            row.append(el("td", { class: "cellcol" }, cell(state, task.task_id + " · " + run.dag_run_id + ": " + state + (ti && ti.error ? " · " + ti.error : ""), open),
              facts ? el("div", { class: "facts", text: facts }) : ""));
          }
          body.append(row);
        }
        // The graph shows the selected run (a click on a run's header), else the latest.
        const shown = runs.find((r) => r.dag_run_id === selectedRun) || runs[0];
        const states = shown ? Object.fromEntries((tis[shown.dag_run_id] || []).map((t) => [t.task_id, t.state])) : {};
        drawGraph(dag, states);
        drawGantt(shown, tis[shown ? shown.dag_run_id : ""] || [], dag);
        // The shown run, while it runs or waits to, can be stopped.
        const stoppable = shown && (shown.state === "running" || shown.state === "queued");
        $("stop-run").hidden = !stoppable;
        if (stoppable) {
          $("stop-run").textContent = "Stop run " + shown.dag_run_id;
          $("stop-run").onclick = () => act("/dags/" + encodeURIComponent(dagId) + "/dagRuns/" + encodeURIComponent(shown.dag_run_id), { state: "failed" }, "Stop");
        }
        // A run executes the DAG version it was created with: say when that is not the file's.
        if (shown && shown.dag_hash !== dag.file_hash) {
          const showChanges = async () => {
            try {
              const v = await api("/dags/" + encodeURIComponent(dagId) + "/dagVersions/" + encodeURIComponent(shown.dag_hash));
              $("version-diff").textContent = v.diff_from_current || "(no changes)";
              $("version-diff").hidden = false;
            } catch (e) { show(e.message); }
          };
          $("version").replaceChildren(
            shown.dag_run_id + " runs DAG version " + shown.dag_hash + "; the DAG file is now version " + dag.file_hash + " ",
            el("button", { type: "button", id: "show-version-diff", text: "Show changes", onclick: showChanges }));
        } else {
          $("version").textContent = shown ? shown.dag_run_id + " runs the DAG file's current version (" + dag.file_hash + ")" : "";
          $("version-diff").hidden = true;
        }
        if (followed) {
          const ti = (tis[followed[0]] || []).find((t) => t.task_id === followed[1]);
          showLog(followed[0], followed[1], ti && ti.try_number > 0 ? ti.try_number : followed[2], ti ? ti.state : followed[3]);
        }
      } catch (e) { show(e.message); }
    }
    $("trigger").addEventListener("submit", async (event) => {
      event.preventDefault();
      let conf;
      try { conf = JSON.parse($("conf").value || "{}"); } catch (e) { show("Conf is not valid JSON: " + e.message); return; }
      if (conf === null || typeof conf !== "object" || Array.isArray(conf)) { show("Conf must be a JSON object"); return; }
      const body = { conf };
      if ($("logical_date").value.trim()) body.logical_date = $("logical_date").value.trim();
      try {
        const run = await api("/dags/" + encodeURIComponent(dagId) + "/dagRuns", { method: "POST", body: JSON.stringify(body) });
        show(""); $("summary").textContent = "queued " + run.dag_run_id; refresh();
      } catch (e) { show("Trigger refused: " + e.message); }
    });
    setupToken(refresh);
    await refresh();
    live(refresh);
  }
  // Server-sent events say when something changed; a slow timer only covers a lost stream.
  // Read with fetch, not EventSource, which cannot send the Authorization header.
  function live(refresh) {
    let pending = false;
    const later = () => { if (!pending) { pending = true; setTimeout(() => { pending = false; refresh(); }, 150); } };
    async function follow() {
      try {
        const response = await fetch("/api/v1/events", { headers: Object.assign({ "Accept": "text/event-stream" }, authHeaders()) });
        if (response.ok && response.body) {
          const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
          let buffer = "";
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buffer += value;
            const events = buffer.split("\n\n");
            buffer = events.pop();
            if (events.some((e) => e.split("\n").includes("event: change"))) later();
          }
        }
      } catch (_) {}
      setTimeout(follow, 3000); // the stream ended or was refused (no token yet): try again
    }
    follow();
    setInterval(refresh, 30000);
  }
  // Each page says which view it is (no inline scripts: the content security policy forbids them).
  const views = { dagList, dagPage };
  document.addEventListener("DOMContentLoaded", () => {
    const view = views[document.body.dataset.view];
    if (view) view();
  });
  return views;
})();
