// The WebSocket close handshake as a browser-grade client sees it (the `ws` package, whose close
// event reports `wasClean` as browsers do: a Close frame both sent and received, then the TCP end).
// Usage: node ws_close.mjs <url> <client|error> [subprotocol]
//   client: the client closes first with 1000 "bye"
//   error:  the client sends a bad STOMP frame (SockJS-framed if the URL ends in /websocket under a
//           session path) and the server closes
// Prints one JSON line {"code":…, "reason":…, "wasClean":…} when the socket has closed.
import { createRequire } from 'node:module';
import path from 'node:path';

const nodePath = process.env.INSTAR_NODE_PATH;
if (!nodePath) { console.error('INSTAR_NODE_PATH is not set: run scripts/test'); process.exit(2); }
const require = createRequire(path.join(nodePath, 'noop.js'));
const WebSocket = require('ws');

const [url, mode, protocol] = process.argv.slice(2);
const framed = /\/ws\/[^/]+\/[^/]+\/websocket$/.test(url);
const ws = protocol ? new WebSocket(url, protocol) : new WebSocket(url);
const timer = setTimeout(() => { console.log(JSON.stringify({ error: 'timeout' })); process.exit(1); }, 10000);

ws.addEventListener('open', () => {
  if (mode === 'client') {
    ws.close(1000, 'bye');
  } else {
    const bad = 'BOGUS\n\n\0';
    ws.send(framed ? JSON.stringify([bad]) : bad);
  }
});
ws.addEventListener('close', (ev) => {
  clearTimeout(timer);
  console.log(JSON.stringify({ code: ev.code, reason: ev.reason, wasClean: ev.wasClean }));
  process.exit(0);
});
ws.addEventListener('error', (ev) => { console.error('error', ev.message); });
