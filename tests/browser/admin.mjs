// Browser test of the template editor: real headless Chromium (Debian's package) driven by
// playwright-core against herald started from target/debug/herald. Opens /admin/, edits and saves a
// template, sees a syntax error reported at its line, and checks that a job sent afterwards uses the
// new text; checks the layout issue 34 found wrong (a wrong token's error beside Save, long lines cut off,
// "New locale" before a token). Saves screenshots to artifacts/admin-page.png, admin-page-wrong-token.png and admin-page-wrapped.png.
//
//   node tests/browser/admin.mjs      (after `cargo test` built the binary; RabbitMQ running)
import { chromium } from "playwright-core";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, cpSync, readFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const herald = join(root, "target", "debug", "herald");
const work = mkdtempSync(join(tmpdir(), "herald-browser-"));
cpSync(join(root, "templates"), join(work, "templates"), { recursive: true });
const ns = "test.browser." + process.pid + "." + Date.now();
const port = await new Promise((resolve) => {
  const s = createServer().listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => resolve(p)); });
});
const token = "browser-test-token";
const env = {
  ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("HERALD_"))),
  RUST_LOG: "info",
  HERALD_HTTP__ADDR: `127.0.0.1:${port}`,
  HERALD_ADMIN__TOKEN: token,
  HERALD_ADMIN__TOKEN_NAME: "browser-test",
  HERALD_TEMPLATES__DIR: join(work, "templates"),
  HERALD_OUTBOX__PATH: join(work, "outbox.jsonl"),
  HERALD_STATE__PATH: join(work, "state"),
  HERALD_AMQP__JOBS_QUEUE: ns + ".jobs",
  HERALD_AMQP__RETRY_QUEUE: ns + ".retry",
  HERALD_AMQP__DEAD_QUEUE: ns + ".dead",
  HERALD_AMQP__EVENTS_EXCHANGE: ns + ".events",
  HERALD_AMQP__FEEDBACK_QUEUE: ns + ".feedback",
};
const server = spawn(herald, ["serve"], { env, stdio: ["ignore", "ignore", "pipe"] });
let logs = "";
server.stderr.on("data", (d) => { logs += d; });

async function ready() {
  for (let i = 0; i < 200; i++) {
    try { if ((await fetch(`http://127.0.0.1:${port}/readyz`)).ok) return; } catch (_) {}
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error("herald did not become ready:\n" + logs);
}

let browser;
try {
  await ready();
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.on("dialog", (d) => d.accept());
  await page.goto(`http://127.0.0.1:${port}/admin/`);
  assert.equal(await page.title(), "herald · templates");

  // Before a token is accepted there is nothing to start a locale in.
  assert.equal(await page.locator("#new").isVisible(), false, "the New locale form shows before a token");
  const saveBefore = await page.locator("#save").boundingBox();

  // A wrong token: the error has its own line under the header; Save and Revert stay side by side, unmoved.
  await page.locator("#token").fill("not-the-token");
  await page.locator("#token").press("Enter");
  const loginError = page.locator("#login-error");
  await loginError.waitFor({ state: "visible" });
  assert.match(await loginError.textContent(), /Wrong token/);
  const [errorBox, saveBox, revertBox, header, main] = await Promise.all(
    ["#login-error", "#save", "#revert", "header", "main"].map((s) => page.locator(s).boundingBox()));
  assert.ok(errorBox.width >= 1400 * 0.9, `the error spans the page: ${JSON.stringify(errorBox)}`);
  assert.ok(errorBox.y >= header.y + header.height - 1 && errorBox.y + errorBox.height <= main.y + 1,
    `the error is between header and main: ${JSON.stringify({ errorBox, header, main })}`);
  assert.equal(saveBox.y, revertBox.y, "Save and Revert on one line");
  assert.equal(saveBox.height, saveBefore.height, "Save is not squeezed");
  assert.equal(await page.locator("#status").textContent(), "", "nothing beside Save");
  assert.equal(await page.locator("#new").isVisible(), false, "the New locale form shows after a wrong token");
  mkdirSync(join(root, "artifacts"), { recursive: true });
  await page.screenshot({ path: join(root, "artifacts", "admin-page-wrong-token.png"), fullPage: true });

  // Keyboard only: type the token and press Enter.
  await page.locator("#token").fill("");
  await page.locator("#token").focus();
  await page.keyboard.type(token);
  await page.keyboard.press("Enter");
  const item = page.locator('nav .tpl[data-key="sms/second-factor-authentication/en"]');
  await item.waitFor();
  await loginError.waitFor({ state: "hidden" });
  assert.equal(await page.locator("#new").isVisible(), true, "the New locale form once the token is accepted");

  // A long line wraps (the pt-BR call was cut off at the editor's edge), and its number is as tall as its rows.
  await page.locator('nav .tpl[data-key="voice/enrollment/pt-BR"]').click();
  await page.waitForFunction(() => document.querySelector("#editing")?.textContent.includes("pt-BR"));
  await page.waitForFunction(() => document.querySelectorAll("#gutter-body span").length > 0);
  const wrap = await page.evaluate(() => {
    const area = document.querySelector("#part-body");
    const numbers = [...document.querySelectorAll("#gutter-body span")];
    const line = parseFloat(getComputedStyle(area).lineHeight);
    return { scroll: area.scrollWidth, client: area.clientWidth, lines: area.value.split("\n").length,
      numbers: numbers.length, rows: numbers[0].getBoundingClientRect().height / line };
  });
  assert.ok(wrap.scroll <= wrap.client, `the editor scrolls sideways: ${JSON.stringify(wrap)}`);
  assert.equal(wrap.numbers, wrap.lines, JSON.stringify(wrap));
  assert.ok(wrap.rows >= 2, `the long line's number spans its wrapped rows: ${JSON.stringify(wrap)}`);
  await page.screenshot({ path: join(root, "artifacts", "admin-page-wrapped.png"), fullPage: true });

  await item.click();
  await item.click();
  const body = page.locator("#part-body");
  await body.waitFor();
  await page.locator("#preview-text").waitFor();
  assert.match(await page.locator("#preview-text").textContent(), /123456 is your verification code for Acme/);
  assert.match(await page.locator("#meter").textContent(), /GSM-7/);

  // A syntax error on line 2: refused, reported with its line, the line number marked.
  await body.fill("Your code:\n{{#if code}}{{code}}");
  await page.locator("#save").click();
  await page.locator("#error").waitFor({ state: "visible" });
  const error = await page.locator("#error").textContent();
  assert.match(error, /sms\/second-factor-authentication\.en\.hbs:\d+:\d+/, error);
  assert.ok(await page.locator("#gutter-body .bad").count() === 1, "the bad line is marked");
  assert.equal(readFileSync(join(work, "templates/sms/second-factor-authentication.en.hbs"), "utf8").startsWith("{{code}} is your"), true);

  // A good edit, saved with Ctrl+S; the live preview and segment counter follow the text.
  await body.fill("Browser edit: {{code}} is your Acme code.");
  await page.waitForFunction(() => document.querySelector("#preview-text")?.textContent.includes("Browser edit"));
  await page.keyboard.press("Control+s");
  await page.locator("#status.ok").waitFor();
  assert.match(await page.locator("#status").textContent(), /Saved/);
  await page.screenshot({ path: join(root, "artifacts", "admin-page.png"), fullPage: true });

  // A job sent now uses the new text.
  const sent = execFileSync(herald, ["send", "--channel", "sms", "--to", "+14155550123", "--code", "482913",
    "--user", "browser", "--wait", "--timeout", "20s"], { env, encoding: "utf8" });
  assert.match(sent, /"type":"gd_send_sms"/, sent);
  const lines = readFileSync(join(work, "outbox.jsonl"), "utf8").trim().split("\n");
  assert.equal(JSON.parse(lines.at(-1)).body, "Browser edit: 482913 is your Acme code.");
  console.log("browser test passed; screenshot in artifacts/admin-page.png");
} finally {
  if (browser) await browser.close();
  // Stopped before its queues go, so that it does not declare them again; then every queue of this run
  // (jobs, retry, each retry delay, dead, feedback): a fixed list leaked the delay and feedback queues.
  const exited = new Promise((r) => server.once("exit", r));
  server.kill("SIGTERM");
  await Promise.race([exited, new Promise((r) => setTimeout(r, 10000))]);
  let names = [];
  try {
    names = execFileSync("rabbitmqctl", ["list_queues", "name", "--no-table-headers", "--quiet"], { encoding: "utf8" })
      .split("\n").map((l) => l.trim()).filter((n) => n.startsWith(ns + "."));
  } catch (_) {}
  for (const q of names) {
    try { execFileSync("rabbitmqctl", ["delete_queue", q], { stdio: "ignore" }); } catch (_) {}
  }
}
