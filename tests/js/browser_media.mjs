// The browser test's driver (tests/browser.rs): serves tests/js/browser_media.html and the UMD bundles
// of @stomp/stompjs and sockjs-client from its own origin (http://localhost:<page port>, a different
// origin from the API's http://127.0.0.1:<port>), opens it in headless Chromium through
// puppeteer-core, and runs the page's check: sign in, STOMP over SockJS, upload a profile picture and
// a post, follow, then show every media URL the API returned as an <img> on the page's origin.
//
// Usage: node browser_media.mjs '<json config>'
//   config: {"api": "http://127.0.0.1:PORT", "pagePort": N, "password": "...",
//            "author": "<user id>", "follower": "<user id>"}
// Needs INSTAR_NODE_PATH (node_modules with puppeteer-core, @stomp/stompjs, sockjs-client) and
// INSTAR_CHROMIUM (the Chromium binary). Prints the page's report as one JSON line on stdout; exits
// 0 when every image loaded, 1 (with the reasons on stderr) otherwise.
import { createRequire } from 'node:module';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const nodePath = process.env.INSTAR_NODE_PATH;
const chromium = process.env.INSTAR_CHROMIUM;
if (!nodePath || !chromium) {
  console.error('INSTAR_NODE_PATH and INSTAR_CHROMIUM must be set: run the tests with scripts/test');
  process.exit(2);
}
const require = createRequire(path.join(nodePath, 'noop.js'));
const puppeteer = require('puppeteer-core');

const cfg = JSON.parse(process.argv[2] || '{}');
for (const k of ['api', 'pagePort', 'password', 'author', 'follower']) {
  if (cfg[k] === undefined) { console.error(`config lacks "${k}"`); process.exit(2); }
}
const TOTAL_MS = 60000;
const here = path.dirname(fileURLToPath(import.meta.url));
const log = (...a) => console.error('[browser-test]', ...a);

// The frontend's own origin: only the page and the two client bundles live here.
const files = {
  '/': ['text/html; charset=utf-8', path.join(here, 'browser_media.html')],
  '/stomp.umd.min.js': ['text/javascript', path.join(nodePath, '@stomp/stompjs/bundles/stomp.umd.min.js')],
  '/sockjs.min.js': ['text/javascript', path.join(nodePath, 'sockjs-client/dist/sockjs.min.js')],
};
const strays = [];
const server = http.createServer((req, res) => {
  const pathname = new URL(req.url, 'http://x').pathname;
  const file = req.method === 'GET' ? files[pathname] : undefined;
  if (!file) {
    if (!strays.includes(`${req.method} ${req.url}`)) strays.push(`${req.method} ${req.url}`);
    res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found on the page origin\n');
    return;
  }
  res.writeHead(200, { 'Content-Type': file[0], 'Cache-Control': 'no-store' });
  fs.createReadStream(file[1]).pipe(res);
});
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(cfg.pagePort, '127.0.0.1', resolve);
});
const origin = `http://localhost:${cfg.pagePort}`;

let browser;
const watchdog = setTimeout(() => {
  log(`FAILED: no result within ${TOTAL_MS / 1000} s`);
  process.exit(1);
}, TOTAL_MS);

async function run() {
  const t0 = Date.now();
  browser = await puppeteer.launch({
    executablePath: chromium,
    headless: true,
    timeout: 20000,
    protocolTimeout: TOTAL_MS,
    // --no-sandbox: Chromium refuses to run as root with its sandbox. `localhost` is pinned to
    // 127.0.0.1, where the page server listens (no ::1 attempt first).
    args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
      '--no-first-run', '--no-default-browser-check', '--host-resolver-rules=MAP localhost 127.0.0.1'],
  });
  log(`launched ${await browser.version()} in ${Date.now() - t0} ms; page origin ${origin}, API ${cfg.api}`);
  const page = await browser.newPage();
  page.on('console', (m) => log(`console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => log(`page error: ${e.message}`));
  page.on('requestfailed', (r) => log(`request failed: ${r.method()} ${r.url()}: ${r.failure() && r.failure().errorText}`));
  page.on('response', (r) => { if (r.status() >= 400) log(`HTTP ${r.status()} for ${r.request().method()} ${r.url()}`); });
  await page.goto(origin + '/', { waitUntil: 'load', timeout: 15000 });
  const libs = await page.evaluate(() => ({ stomp: typeof StompJs, sockjs: typeof SockJS, run: typeof runMediaCheck }));
  if (libs.stomp !== 'object' || libs.sockjs !== 'function' || libs.run !== 'function') {
    throw new Error(`the page did not load its scripts: ${JSON.stringify(libs)}`);
  }
  return page.evaluate((c) => window.runMediaCheck(c), {
    api: cfg.api,
    password: cfg.password,
    author: cfg.author,
    follower: cfg.follower,
    imageTimeoutMs: 10000,
    stepTimeoutMs: 15000,
  });
}

let code = 1;
try {
  const report = await run();
  process.stdout.write(JSON.stringify(report) + '\n');
  for (const i of report.images) {
    log(`${i.outcome === 'load' ? 'ok  ' : 'FAIL'} ${i.what}: ${i.url} -> ${i.resolved} (${i.outcome}, ${i.naturalWidth}x${i.naturalHeight})`);
  }
  if (report.ok) {
    log(`ok: ${report.images.length} media URLs loaded as images on ${origin}`);
    code = 0;
  } else {
    log(`FAILED: ${report.failures.length} problem(s) on the page at ${origin}:`);
    for (const f of report.failures) log(`  - ${f}`);
    if (strays.length) log(`  requests that reached the page's origin (which answered 404) instead of the API: ${strays.join(', ')}`);
  }
} catch (e) {
  log(`FAILED: ${e && e.stack ? e.stack : e}`);
} finally {
  if (browser) await browser.close().catch(() => {});
  server.close();
  clearTimeout(watchdog);
}
process.exit(code);
