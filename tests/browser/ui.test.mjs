// The status UI in a real headless Chromium, against a running `sluice standalone` with an
// admin token and a viewer token: without a token the page asks for one, a viewer sees the
// DAGs but a trigger is refused and says why, the admin's trigger queues a run that turns
// green in the grid without a reload, a task's log opens, a run's DAG version and the changes
// to the file since are shown, the token stays in the tab only, and the admin sees the audit log.
// Usage: node ui.test.mjs <base-url> <admin-token> <screenshot-dir> <viewer-token> <dag-file>
import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import { appendFileSync, mkdirSync } from "node:fs";

const [base, token, shots, viewer, dagFile] = process.argv.slice(2);
mkdirSync(shots, { recursive: true });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({ viewport: { width: 1300, height: 900 } });
const errors = [];
page.on("pageerror", (e) => errors.push(String(e)));
// A page that breaks the content security policy (an inline script) says so on the console.
page.on("console", (m) => { if (m.type() === "error" && m.text().includes("Content Security Policy")) errors.push(m.text()); });
let failed = false;
const step = async (name, body) => {
  try { await body(); console.log("ok   " + name); }
  catch (e) { failed = true; console.log("FAIL " + name + "\n     " + e.message); await page.screenshot({ path: `${shots}/failed-${name.replace(/\W+/g, "-")}.png`, fullPage: true }); }
};

// The list re-renders on every change event: a click can land on a row just replaced, so a
// navigation is retried until the URL changes.
const navigateBy = async (selector, url) => {
  for (let i = 0; i < 5; i++) {
    await page.click(selector);
    try { await page.waitForURL(url, { timeout: 3000 }); return; } catch (_) {}
  }
  throw new Error("clicking " + selector + " never reached " + url);
};

await step("without a token the page asks for one", async () => {
  await page.goto(base + "/");
  await page.waitForFunction(() => document.getElementById("message").textContent.includes("needs an API token"), null, { timeout: 10000 });
  assert.equal(await page.locator("#dags tbody tr").count(), 0, "nothing is shown without a token");
  assert.equal(await page.evaluate(() => document.activeElement.id), "token", "the token field has the focus");
  await page.screenshot({ path: `${shots}/0-asks-for-token.png`, fullPage: true });
});

await step("with a viewer token the DAG list shows the DAG", async () => {
  await page.fill("#token", viewer);
  await page.dispatchEvent("#token", "change");
  await page.waitForSelector("#dags tbody tr a", { timeout: 10000 });
  assert.deepEqual(await page.locator("#dags tbody tr a").allTextContents(), ["prosthesis_stats", "ui_demo", "ui_stop"]);
  assert.ok(await page.locator("#audit-section").isHidden(), "a viewer does not see the audit log");
  await page.screenshot({ path: `${shots}/1-dag-list.png`, fullPage: true });
});

await step("a viewer's trigger is refused and says why", async () => {
  await navigateBy('#dags tbody tr a:text-is("ui_demo")', /\/dags\/ui_demo$/);
  await page.waitForSelector("#trigger");
  await page.fill("#logical_date", "2026-01-01T00:00:00Z");
  await page.click("#trigger button[type=submit]");
  await page.waitForFunction(() => document.getElementById("message").textContent.includes("403"), null, { timeout: 10000 });
  assert.ok((await page.textContent("#message")).includes("needs operator"));
  await page.screenshot({ path: `${shots}/2-refused-for-a-viewer.png`, fullPage: true });
});

await step("bad conf JSON is caught before sending", async () => {
  await page.fill("#conf", "{not json");
  await page.click("#trigger button[type=submit]");
  await page.waitForFunction(() => document.getElementById("message").textContent.includes("not valid JSON"), null, { timeout: 5000 });
  await page.fill("#conf", '{"region": "<script>alert(1)</script>"}');
});

await step("a triggered run turns green in the grid without a reload", async () => {
  await page.fill("#token", token);
  await page.dispatchEvent("#token", "change");
  await page.click("#trigger button[type=submit]");
  await page.waitForFunction(() => document.querySelectorAll("#grid tbody span.cell.success").length === 2, null, { timeout: 30000 });
  assert.equal(await page.locator("#grid tbody span.cell.failed").count(), 0);
  await page.screenshot({ path: `${shots}/3-run-green.png`, fullPage: true });
});

await step("a task's log opens", async () => {
  await page.click("#grid tbody tr:first-child td.cellcol span.cell");
  await page.waitForFunction(() => document.getElementById("log").textContent.includes("try succeeded"), null, { timeout: 10000 });
  const log = await page.textContent("#log");
  assert.ok(log.includes("hello from the UI test"), log);
  // The task printed its environment: the page shows no token of this server.
  assert.ok(log.includes("SLUICE_DAG_ID=ui_demo"), log);
  const page_text = await page.textContent("body");
  for (const secret of [token, viewer]) assert.ok(!page_text.includes(secret), "the page shows a token");
  await page.screenshot({ path: `${shots}/4-task-log.png`, fullPage: true });
});

await step("marking a task failed turns it red and fails the run", async () => {
  await page.click("#mark-failed");
  await page.waitForFunction(() => document.querySelectorAll("#grid tbody span.cell.failed").length === 1, null, { timeout: 10000 });
  await page.waitForFunction(() => document.querySelectorAll("#grid thead span.cell.failed").length === 1, null, { timeout: 10000 });
  await page.screenshot({ path: `${shots}/5-marked-failed.png`, fullPage: true });
});

await step("a run's DAG version and the changes to the file since are shown", async () => {
  await page.waitForFunction(() => document.getElementById("version").textContent.includes("runs the DAG file's current version"), null, { timeout: 10000 });
  appendFileSync(dagFile, "# edited after the run by the browser test\n");
  // The server re-reads the folder within two seconds; the page shows it when it loads.
  for (let i = 0; i < 10; i++) {
    await page.reload();
    try { await page.waitForSelector("#show-version-diff", { timeout: 1500 }); break; } catch (_) {}
  }
  await page.click("#show-version-diff");
  await page.waitForFunction(() => document.getElementById("version-diff").textContent.includes("+# edited after the run by the browser test"), null, { timeout: 10000 });
  assert.ok((await page.textContent("#version")).includes("the DAG file is now version"));
  await page.screenshot({ path: `${shots}/5b-version-diff.png`, fullPage: true });
});

await step("a running task is stopped from its panel, and the grid says who stopped it", async () => {
  const started = await fetch(base + "/api/v1/dags/ui_stop/dagRuns", { method: "POST", headers: { "Authorization": "Bearer " + token, "Content-Type": "application/json" }, body: JSON.stringify({ conf: {} }) });
  assert.equal(started.status, 200, await started.text());
  await page.goto(base + "/dags/ui_stop");
  await page.waitForSelector("#grid tbody tr:first-child span.cell.running", { timeout: 15000 });
  assert.ok(await page.locator("#stop-run").isVisible(), "a running run can be stopped");
  await page.click("#grid tbody tr:first-child span.cell.running");
  await page.waitForSelector("#stop-task:not([hidden])", { timeout: 5000 });
  assert.ok(await page.locator("#mark-success").isHidden(), "a running task is stopped, not marked");
  await page.screenshot({ path: `${shots}/5c-running-task.png`, fullPage: true });
  const clicked = Date.now();
  await page.click("#stop-task");
  // `sleep 600` ends within the poll (1 s) and the grace period (5 s) of the process group.
  await page.waitForSelector("#grid tbody tr:first-child span.cell.failed", { timeout: 10000 });
  assert.ok(Date.now() - clicked < 10000);
  const title = await page.getAttribute("#grid tbody tr:first-child span.cell.failed", "title");
  assert.ok(title.includes("stopped by api:admin"), title);
  await page.waitForSelector("#grid thead span.cell.failed", { timeout: 10000 });
  assert.ok(await page.locator("#stop-run").isHidden(), "a finished run has nothing to stop");
  await page.screenshot({ path: `${shots}/5d-task-stopped.png`, fullPage: true });
});

await step("the reference pipeline's run shows its window, duration and the rows it moved", async () => {
  await page.goto(base + "/dags/prosthesis_stats");
  // The scheduled run for the latest window started with the server.
  await page.waitForSelector("#grid thead th.runhead span.cell.success", { timeout: 120000 });
  const head = await page.textContent("#grid thead th.runhead");
  assert.match(head, /\d\d-\d\d \d\d:\d\d–\d\d:\d\d/, "the column is labelled with its interval: " + head);
  assert.match(head, /\d(\.\d)? (ms|s)/, "and its duration: " + head);
  const row = async (task) => page.textContent(`#grid tbody tr:has(td:text-is("${task}"))`);
  for (const task of ["extract_telemetry", "compute_metrics", "load_stats", "quarantine", "load_quarantine"]) {
    assert.match(await row(task), /\d[\d,]* rows/, task + " shows the rows it moved: " + await row(task));
  }
  assert.match(await row("invalidate_reports"), /\d[\d,]* sent/, "the invalidations sent: " + await row("invalidate_reports"));
  // The timeline has a bar for every task of the run.
  const bars = await page.locator("#gantt .gantt-track .bar.success").count();
  assert.equal(bars, await page.locator("#grid tbody tr").count(), "a bar per task");
  assert.match(await row("check_window"), /3\/3 checks passed/, "the window's checks: " + await row("check_window"));
  await page.screenshot({ path: `${shots}/7-reference-run.png`, fullPage: true });
});

await step("the token stays in this tab only", async () => {
  assert.equal(await page.evaluate(() => localStorage.getItem("sluice-token")), null, "never on disk");
  assert.equal(await page.evaluate(() => sessionStorage.getItem("sluice-token")), token);
  const other = await browser.newPage();
  await other.goto(base + "/");
  await other.waitForFunction(() => document.getElementById("message").textContent.includes("needs an API token"), null, { timeout: 10000 });
  await other.close();
});

await step("the admin sees the audit log with the trigger in it", async () => {
  await page.goto(base + "/");
  await page.waitForSelector("#audit-section:not([hidden]) #audit tbody tr", { timeout: 10000 });
  const rows = await page.locator("#audit tbody tr").allTextContents();
  assert.ok(rows.some((r) => r.includes("admin (admin)") && r.includes("POST /api/v1/dags/ui_demo/dagRuns") && r.includes("200")), rows.join("\n"));
  assert.ok(rows.some((r) => r.includes("dashboard (viewer)") && r.includes("403")), rows.join("\n"));
  await page.screenshot({ path: `${shots}/6-audit-log.png`, fullPage: true });
});

await step("no script errors on the pages", async () => {
  assert.deepEqual(errors, []);
});

await browser.close();
process.exit(failed ? 1 : 0);
