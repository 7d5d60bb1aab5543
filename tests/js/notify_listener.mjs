// Listens for alarms the way the mjinsta frontend does: @stomp/stompjs over sockjs-client, CONNECT
// with "Authorization: Bearer <token>", SUBSCRIBE /user/queue/notify.
// Usage: node notify_listener.mjs <sockjs-url> <token> <count>
// Prints one JSON object per line: {"event":"ready"} once the SUBSCRIBE is confirmed by a
// receipt, {"event":"message",...} per alarm, {"event":"done"} after <count> alarms (exit 0), or
// {"event":"failed","why":...} (exit 1).
import { createRequire } from 'node:module';
import path from 'node:path';

const nodePath = process.env.INSTAR_NODE_PATH;
if (!nodePath) { console.error('INSTAR_NODE_PATH is not set: run scripts/test'); process.exit(2); }
const require = createRequire(path.join(nodePath, 'noop.js'));
const { Client } = require('@stomp/stompjs');
const WebSocket = require('ws');
const SockJS = require('sockjs-client');
Object.assign(globalThis, { WebSocket });

const [url, token, countArg] = process.argv.slice(2);
const want = Number(countArg || '1');
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const fail = (why) => { out({ event: 'failed', why }); process.exit(1); };
const timer = setTimeout(() => fail('timeout'), 30000);
let got = 0;

const client = new Client({
  connectHeaders: { Authorization: 'Bearer ' + token },
  heartbeatIncoming: 10000,
  heartbeatOutgoing: 10000,
  reconnectDelay: 0,
  webSocketFactory: () => new SockJS(url),
  debug: () => {},
});
client.onStompError = (f) => fail('ERROR frame: ' + f.headers.message);
client.onWebSocketClose = () => { if (got < want) fail('socket closed'); };
client.onConnect = () => {
  const receipt = 'ready-' + Date.now();
  client.watchForReceipt(receipt, () => out({ event: 'ready' }));
  client.subscribe('/user/queue/notify', (m) => {
    got += 1;
    out({ event: 'message', destination: m.headers.destination, body: JSON.parse(m.body) });
    if (got >= want) {
      clearTimeout(timer);
      out({ event: 'done' });
      client.deactivate().then(() => process.exit(0));
    }
  }, { id: 'sub-0', receipt });
};
client.activate();
