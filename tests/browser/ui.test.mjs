// The status UI in a real headless Chromium, against a running `sluice standalone`:
// the DAG list loads, a trigger without the API token is refused and says why, a trigger
// with it queues a run that turns green in the grid without a reload, and a task's log opens.
// Usage: node ui.test.mjs <base-url> <token> <screenshot-dir>
import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";

const [base, token, shots] = process.argv.slice(2);
mkdirSync(shots, { recursive: true });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({ viewport: { width: 1300, height: 900 } });
const errors = [];
page.on("pageerror", (e) => errors.push(String(e)));
let failed = false;
const step = async (name, body) => {
  try { await body(); console.log("ok   " + name); }
  catch (e) { failed = true; console.log("FAIL " + name + "\n     " + e.message); await page.screenshot({ path: `${shots}/failed-${name.replace(/\W+/g, "-")}.png`, fullPage: true }); }
};

await step("the DAG list shows the DAG", async () => {
  await page.goto(base + "/");
  await page.waitForSelector("#dags tbody tr a", { timeout: 10000 });
  assert.deepEqual(await page.locator("#dags tbody tr a").allTextContents(), ["ui_demo"]);
  await page.screenshot({ path: `${shots}/1-dag-list.png`, fullPage: true });
});

await step("a trigger without the token is refused", async () => {
  await page.click("text=ui_demo");
  await page.waitForSelector("#trigger");
  await page.fill("#logical_date", "2026-01-01T00:00:00Z");
  await page.click("#trigger button[type=submit]");
  await page.waitForFunction(() => document.getElementById("message").textContent.includes("401"), null, { timeout: 10000 });
  await page.screenshot({ path: `${shots}/2-refused-without-token.png`, fullPage: true });
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
  await page.screenshot({ path: `${shots}/4-task-log.png`, fullPage: true });
});

await step("marking a task failed turns it red and fails the run", async () => {
  await page.click("#mark-failed");
  await page.waitForFunction(() => document.querySelectorAll("#grid tbody span.cell.failed").length === 1, null, { timeout: 10000 });
  await page.waitForFunction(() => document.querySelectorAll("#grid thead span.cell.failed").length === 1, null, { timeout: 10000 });
  await page.screenshot({ path: `${shots}/5-marked-failed.png`, fullPage: true });
});

await step("no script errors on the pages", async () => {
  assert.deepEqual(errors, []);
});

await browser.close();
process.exit(failed ? 1 : 0);
