// Headless-Chromium driver for the frontend tests (tests/frontend.py starts it; not part of the pack).
//
//   node tests/frontend/driver.mjs
//
// Environment: PLAYWRIGHT_CORE_DIR (a node_modules folder holding playwright-core, or the playwright-core
// package folder itself; default /work/frontend-tools/node_modules), CHROMIUM_PATH (default /usr/bin/chromium).
//
// Protocol: one JSON object per line on stdin, one JSON answer per line on stdout.
//   {"id": 1, "op": "goto", "url": "http://127.0.0.1:8188/", "timeout": 60000}
//   {"id": 2, "op": "eval", "src": "return app.graph.nodes.length", "arg": null, "timeout": 30000}
//       src is the body of an async function of `arg` and `app` (ComfyUI's app object, as extensions import
//       it); its return value must be JSON-able.
//   {"id": 3, "op": "console", "clear": true}   -> console messages, page errors and failed requests so far
//   {"id": 4, "op": "act", "selector": "[aria-label='Node Library (n)']", "action": "click", "value": null,
//    "timeout": 30000}   -> a user action through Playwright's locator (first match): click, hover, fill
//       (value = the text), press (value = a key, e.g. "Enter"); waits for the element to be actionable.
//       Optional "position": {x, y} inside the element, "button": "right" (clicks).
//   {"id": 5, "op": "screenshot", "path": "/abs/file.png"}
//   {"id": 6, "op": "close"}
// Answers: {"id": 1, "ok": true, "value": ...} or {"id": 1, "ok": false, "error": "..."}.
// The first line written is {"ready": true, "version": "<chromium version>"} (or {"ready": false, "error"}).
import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { createRequire } from "node:module";

function write(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function loadPlaywright() {
  const dir = process.env.PLAYWRIGHT_CORE_DIR || "/work/frontend-tools/node_modules";
  let pkgDir = path.join(dir, "playwright-core");
  try {
    const own = JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8"));
    if (own.name === "playwright-core") pkgDir = dir;
  } catch (e) {
    // dir is a node_modules folder
  }
  const require = createRequire(path.join(pkgDir, "..", "_zimage_driver.cjs"));
  return require(pkgDir);
}

const CHROMIUM_ARGS = [
  "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps",
  "--disable-extensions", "--mute-audio",
];

const log = [];  // {kind: console|pageerror|requestfailed|response, type, text, url}

async function main() {
  let browser;
  try {
    const { chromium } = loadPlaywright();
    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
      headless: true,
      args: CHROMIUM_ARGS,
      timeout: 120000,
    });
  } catch (e) {
    write({ ready: false, error: String(e && e.stack || e) });
    process.exit(2);
  }
  const context = await browser.newContext({ viewport: { width: 1600, height: 1000 } });
  const page = await context.newPage();
  page.on("console", (m) => {
    const loc = m.location() || {};
    log.push({ kind: "console", type: m.type(), text: m.text(), url: loc.url || "" });
  });
  page.on("pageerror", (e) => log.push({ kind: "pageerror", type: "error", text: String(e && e.stack || e), url: "" }));
  page.on("requestfailed", (r) => log.push({ kind: "requestfailed", type: "error",
    text: (r.failure() || {}).errorText || "failed", url: r.url() }));
  page.on("response", (r) => {
    if (r.status() >= 400) log.push({ kind: "response", type: "error", text: `HTTP ${r.status()}`, url: r.url() });
  });
  write({ ready: true, version: browser.version() });

  const rl = readline.createInterface({ input: process.stdin, terminal: false });
  let closing = false;
  const shutdown = async () => {
    if (closing) return;
    closing = true;
    try { await browser.close(); } catch (e) { /* already gone */ }
    process.exit(0);
  };
  for await (const line of rl) {
    if (!line.trim()) continue;
    let cmd;
    try {
      cmd = JSON.parse(line);
    } catch (e) {
      write({ id: null, ok: false, error: "bad JSON: " + e });
      continue;
    }
    const { id, op } = cmd;
    try {
      let value = null;
      if (op === "goto") {
        await page.goto(cmd.url, { waitUntil: "load", timeout: cmd.timeout || 60000 });
      } else if (op === "eval") {
        const run = page.evaluate(async ([src, arg]) => {
          const AsyncFunction = Object.getPrototypeOf(async function () {}).constructor;
          const app = window.app ?? window.comfyAPI?.app?.app;  // ComfyUI's app, as extensions import it
          return await new AsyncFunction("arg", "app", src)(arg, app);
        }, [cmd.src, cmd.arg === undefined ? null : cmd.arg]);
        const limit = cmd.timeout || 30000;
        let timer;
        const timeout = new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error(`eval timed out after ${limit} ms`)), limit);
        });
        try {
          value = await Promise.race([run, timeout]);
        } finally {
          clearTimeout(timer);
        }
        if (value === undefined) value = null;
      } else if (op === "console") {
        value = log.slice();
        if (cmd.clear) log.length = 0;
      } else if (op === "act") {
        const target = page.locator(cmd.selector).first();
        const opts = { timeout: cmd.timeout || 30000 };
        if (cmd.position) opts.position = cmd.position;  // {x, y} inside the element (e.g. a point on the canvas)
        if (cmd.button) opts.button = cmd.button;        // "right" for a context menu
        if (cmd.action === "click") await target.click(opts);
        else if (cmd.action === "hover") await target.hover(opts);
        else if (cmd.action === "fill") await target.fill(String(cmd.value ?? ""), opts);
        else if (cmd.action === "press") await target.press(String(cmd.value), opts);
        else throw new Error(`unknown action ${cmd.action}`);
      } else if (op === "screenshot") {
        await page.screenshot({ path: cmd.path, fullPage: false });
      } else if (op === "close") {
        write({ id, ok: true, value: null });
        await shutdown();
        return;
      } else {
        throw new Error(`unknown op ${op}`);
      }
      write({ id, ok: true, value });
    } catch (e) {
      write({ id, ok: false, error: String(e && e.stack || e) });
    }
  }
  await shutdown();  // stdin closed: the Python side is gone
}

main();
