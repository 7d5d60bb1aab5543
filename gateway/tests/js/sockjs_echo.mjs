// Echo check with the real sockjs-client (1.6.x) against the gateway's SockJS
// endpoint, forcing one transport.
//
//   INSTAR_NODE_PATH=<dir>/node_modules node sockjs_echo.mjs <url> <transport>
//
// <url> is the SockJS base URL (http://127.0.0.1:PORT/ws); <transport> is a
// sockjs-client transport name: websocket, xhr-streaming or xhr-polling.
// Prints one JSON line and exits 0 when every message came back intact and
// the session used the requested transport, 1 otherwise.
import { createRequire } from 'node:module';
import path from 'node:path';

const nodePath = process.env.INSTAR_NODE_PATH || process.env.NODE_PATH;
if (!nodePath) {
  console.log(JSON.stringify({ ok: false, error: 'INSTAR_NODE_PATH is not set' }));
  process.exit(1);
}
// ESM ignores NODE_PATH: resolve from the given node_modules directory.
const require = createRequire(path.join(path.resolve(nodePath), '..', 'index.js'));
const SockJS = require('sockjs-client');

const [url, transport] = process.argv.slice(2);
if (!url || !transport) {
  console.log(JSON.stringify({ ok: false, error: 'usage: sockjs_echo.mjs <url> <transport>' }));
  process.exit(1);
}

const big = 'x'.repeat(40 * 1024) + '한'.repeat(7 * 1024); // ~61 KiB of UTF-8
const expected = [
  'hello',
  '안녕하세요, 세계! 😀',
  'CONNECT\naccept-version:1.2,1.1,1.0\nheart-beat:10000,10000\n\n\u0000',
  'quotes " backslash \\ separators \u2028\u2029 specials \ufff0 \u200c',
  big,
  '',
  'last',
];

const result = { ok: false, transport, used: null, sent: expected.length, received: 0 };
const received = [];

function finish(ok, error) {
  result.ok = ok;
  result.received = received.length;
  if (error) result.error = error;
  console.log(JSON.stringify(result));
  process.exit(ok ? 0 : 1);
}

const timer = setTimeout(() => finish(false, 'timeout'), 20000);

const sock = new SockJS(url, null, { transports: [transport], timeout: 10000 });
sock.onopen = () => {
  result.used = sock.transport;
  for (const m of expected) sock.send(m);
};
sock.onmessage = (e) => {
  received.push(e.data);
  if (received.length < expected.length) return;
  for (let i = 0; i < expected.length; i++) {
    if (received[i] !== expected[i]) {
      clearTimeout(timer);
      finish(false, `message ${i} differs (${String(received[i]).length} vs ${expected[i].length} chars)`);
      return;
    }
  }
  if (sock.transport !== transport) {
    clearTimeout(timer);
    finish(false, `used transport ${sock.transport}`);
    return;
  }
  // Ask the server to close: the echo application answers c[3000,"Go away!"].
  sock.send('close');
};
sock.onclose = (e) => {
  clearTimeout(timer);
  result.close = { code: e.code, reason: e.reason };
  if (received.length === expected.length && e.code === 3000 && e.reason === 'Go away!') {
    finish(true);
  } else {
    finish(false, `closed early: ${e.code} ${e.reason}`);
  }
};
