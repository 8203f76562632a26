// Headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core) against a real
// Tether: the admin status page shows a pool member going unhealthy when it is killed, and
// the example echo page works through the sidecar (Connect, Send, echo, Close Socket); the echo
// page loads over HTTPS with HTTP/2 and its wss:// WebSocket runs over that HTTP/2 connection
// (RFC 8441), which the admin /sessions list proves.
// Screenshots go to integration-tests/artifacts/.
//
//   node status_page.test.mjs           (FIXTURE=path/to/browser_fixture, CHROMIUM=path)
//
// Exit code 0 on success; any failed expectation throws.

import { spawn } from "node:child_process";
import { createHash, X509Certificate } from "node:crypto";
import { mkdirSync, readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..");
const fixturePath = process.env.FIXTURE ?? join(process.env.CARGO_TARGET_DIR ?? join(root, "target"), "debug", "browser_fixture");
const artifacts = join(root, "integration-tests", "artifacts");
mkdirSync(artifacts, { recursive: true });
const STEP = 15_000;

const fixture = spawn(fixturePath, [], { stdio: ["pipe", "pipe", "inherit"] });
const lines = createInterface({ input: fixture.stdout });
const pending = [];
const queued = [];
lines.on("line", line => (pending.length ? pending.shift()(line) : queued.push(line)));
function nextLine() {
  if (queued.length) return Promise.resolve(queued.shift());
  return new Promise((resolve, reject) => {
    pending.push(resolve);
    setTimeout(() => reject(new Error("fixture said nothing within " + STEP + " ms")), STEP);
  });
}

let browser;
try {
  const addrs = JSON.parse(await nextLine());
  console.log("fixture:", addrs);
  // Trust the HTTPS listener's own certificate by its key (no certificate error state, which
  // would change how Chromium pools connections).
  const spki = new X509Certificate(readFileSync(addrs.cert)).publicKey.export({ type: "spki", format: "der" });
  const spkiHash = createHash("sha256").update(spki).digest("base64");
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--ignore-certificate-errors-spki-list=" + spkiHash,
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const status = await context.newPage();
  await status.goto(addrs.status);
  const doomedState = status.locator("#poolRows tr", { hasText: addrs.doomed }).locator(".state");
  await doomedState.filter({ hasText: /^healthy$/ }).waitFor({ timeout: STEP });
  await status.locator("#readiness", { hasText: /^ready$/ }).waitFor({ timeout: STEP });
  console.log("status page: member", addrs.doomed, "healthy, sidecar ready");

  // The echo demo through the sidecar, in a second tab of the same browser.
  const demo = await context.newPage();
  await demo.goto(addrs.demo);
  const url = await demo.locator("#connectionUrl").inputValue();
  assert.equal(url, addrs.demo.replace("http://", "ws://").replace(/\/$/, "/ws"));
  await demo.click("#connectButton");
  await demo.locator("#stateLabel[data-state=open]").waitFor({ timeout: STEP });
  await demo.fill("#sendMessage", "Hello through Tether");
  await demo.click("#sendButton");
  await demo.locator("#commsLog tr", { hasText: "Hello through Tether" }).nth(1).waitFor({ timeout: STEP });
  console.log("echo demo: sent and received through the sidecar");

  // The live session shows on the status page; the member is killed and turns unhealthy.
  await status.locator("#sessions tr", { hasText: "echo" }).first().waitFor({ timeout: STEP });
  fixture.stdin.write("kill\n");
  assert.equal(await nextLine(), "killed");
  await doomedState.filter({ hasText: /^unhealthy$/ }).waitFor({ timeout: STEP });
  await status.locator("#readiness", { hasText: /^not ready$/ }).waitFor({ timeout: STEP });
  console.log("status page: member", addrs.doomed, "unhealthy, sidecar not ready");
  await demo.screenshot({ path: join(artifacts, "echo-demo.png") });

  await demo.click("#closeButton");
  await demo.locator("#stateLabel[data-state=closed]").waitFor({ timeout: STEP });
  // The ending is listed with its close code (the page closes with 1000).
  await status.locator("#endings tr", { hasText: "1000" }).first().waitFor({ timeout: STEP });
  await status.screenshot({ path: join(artifacts, "status-page.png"), fullPage: true });
  console.log("echo demo closed; ending listed");

  // HTTPS: the page over HTTP/2, and its wss:// WebSocket on the same HTTP/2 connection.
  const secure = await context.newPage();
  await secure.goto(addrs.secure);
  const pageProtocol = await secure.evaluate(() => performance.getEntriesByType("navigation")[0].nextHopProtocol);
  assert.equal(pageProtocol, "h2");
  const echoed = await secure.evaluate(() => new Promise((resolve, reject) => {
    const ws = new WebSocket(location.origin.replace("https:", "wss:") + "/ws");
    window.h2socket = ws;
    ws.onopen = () => ws.send("over HTTP/2");
    ws.onmessage = e => resolve(e.data);
    ws.onerror = () => reject(new Error("WebSocket failed"));
    setTimeout(() => reject(new Error("no echo")), 10_000);
  }));
  assert.equal(echoed, "over HTTP/2");
  const sessions = await (await fetch(addrs.status + "sessions")).json();
  const overH2 = sessions.live.filter(s => s.http_version === "2");
  assert.equal(overH2.length, 1, JSON.stringify(sessions));
  await secure.evaluate(() => new Promise(resolve => { window.h2socket.onclose = resolve; window.h2socket.close(1000); }));
  console.log("https: page over h2, WebSocket over the same HTTP/2 connection (RFC 8441)");

  // Chat: two tabs through the sidecar; a message from one is broadcast to both.
  const tabs = [await context.newPage(), await context.newPage()];
  for (const tab of tabs) {
    await tab.goto(addrs.chat);
    await tab.locator("#state[data-state=open]").waitFor({ timeout: STEP });
  }
  await tabs[0].fill("#message", "hello from tab 1");
  await tabs[0].click("#send");
  for (const tab of tabs) {
    await tab.locator("#messages li", { hasText: "hello from tab 1" }).waitFor({ timeout: STEP });
  }
  await tabs[1].screenshot({ path: join(artifacts, "chat.png") });
  console.log("chat: broadcast reached both tabs; screenshots in", artifacts);
} finally {
  if (browser) await browser.close();
  fixture.stdin.end();
  fixture.kill("SIGTERM");
}
