// Smoke check run by `scripts/test --setup-only`: one STOMP round trip through
// RabbitMQ Web-STOMP with @stomp/stompjs + ws, as the conformance tests do; then
// puppeteer-core launches the system Chromium ($INSTAR_CHROMIUM) headless and
// evaluates one expression in a blank page, as the browser test does.
// Run with NODE_PATH=$INSTAR_NODE_PATH (CommonJS `require` honours NODE_PATH; ESM `import` does not).
'use strict';
const { Client } = require('@stomp/stompjs');
const WebSocket = require('ws');
require('sockjs-client'); // only checks that it is installed

Object.assign(globalThis, { WebSocket }); // Node 20 has no global WebSocket

// Chromium as root needs --no-sandbox; the flags are the browser test's (tests/js/browser_media.mjs).
async function browserSmoke() {
  const executablePath = process.env.INSTAR_CHROMIUM;
  if (!executablePath) throw new Error('INSTAR_CHROMIUM is not set');
  const puppeteer = require('puppeteer-core');
  const t0 = Date.now();
  const browser = await puppeteer.launch({
    executablePath,
    headless: true,
    timeout: 20000,
    args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  try {
    const page = await browser.newPage();
    const two = await page.evaluate(() => 1 + 1);
    if (two !== 2) throw new Error(`page.evaluate(1 + 1) gave ${two}`);
    console.log(`node smoke: puppeteer-core launched ${await browser.version()} (${executablePath}, ${Date.now() - t0} ms)`);
  } finally {
    await browser.close();
  }
}

const url = process.env.INSTAR_TEST_RABBIT_WEB_STOMP || 'ws://127.0.0.1:15674/ws';
const dest = `/queue/instar-smoke-node-${process.pid}-${Date.now()}`;
const started = Date.now();
const timer = setTimeout(() => {
  console.error(`node smoke: no round trip through ${url} and Chromium launch within 45 s`);
  process.exit(1);
}, 45000);

const client = new Client({
  brokerURL: url,
  connectHeaders: { login: 'guest', passcode: 'guest' },
  reconnectDelay: 0,
  heartbeatIncoming: 0,
  heartbeatOutgoing: 0,
});
client.onConnect = () => {
  client.subscribe(dest, (m) => {
    console.log(`node smoke: @stomp/stompjs round trip via ${url} ok (${Date.now() - started} ms, body=${m.body})`);
    client.deactivate().then(browserSmoke).then(() => {
      clearTimeout(timer);
      process.exit(0);
    }, (e) => {
      console.error('node smoke: chromium via puppeteer-core failed:', e && e.message);
      process.exit(1);
    });
  }, { 'auto-delete': 'true' });
  client.publish({ destination: dest, body: 'hello' });
};
client.onStompError = (f) => { console.error('node smoke: STOMP ERROR', f.headers.message); process.exit(1); };
client.onWebSocketError = (e) => { console.error('node smoke: WebSocket error', e && e.message); process.exit(1); };
client.activate();
