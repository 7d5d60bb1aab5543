// The frontend's login flow with the real @stomp/stompjs client, over plain WebSocket (/stomp) or
// over sockjs-client (/ws), the way mjinsta's App.js does it:
//   CONNECT with "Authorization: Bearer <token>", SUBSCRIBE /user/queue/notify, heart-beats,
//   DISCONNECT with a receipt on deactivate().
// Usage: node stompjs_flow.mjs <ws|sockjs> <url> <token> [transport]
// Protocol with the Rust test over stdout, one JSON object per line:
//   {"event":"ready"}             after both subscriptions are confirmed by receipts
//   {"event":"message",...}       every MESSAGE received
//   {"event":"done",...}          after deactivate(); exit code 0 when every check passed
import { createRequire } from 'node:module';
import path from 'node:path';

const nodePath = process.env.INSTAR_NODE_PATH;
if (!nodePath) { console.error('INSTAR_NODE_PATH is not set: run scripts/test'); process.exit(2); }
const require = createRequire(path.join(nodePath, 'noop.js'));
const { Client } = require('@stomp/stompjs');
const WebSocket = require('ws');
const SockJS = require('sockjs-client');
Object.assign(globalThis, { WebSocket });

const [mode, url, token, transport] = process.argv.slice(2);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const log = [];
let notify = 0, echoed = null, connectedHeaders = null;

const client = new Client({
  connectHeaders: { Authorization: 'Bearer ' + token },
  heartbeatIncoming: 10000,
  heartbeatOutgoing: 10000,
  reconnectDelay: 0,
  debug: (s) => log.push(s),
});
if (mode === 'sockjs') {
  client.webSocketFactory = () => new SockJS(url, null, transport ? { transports: [transport] } : undefined);
} else {
  client.brokerURL = url;
}

const fail = (why) => { out({ event: 'failed', why }); process.exit(1); };
const timer = setTimeout(() => fail('timeout'), 20000);

client.onStompError = (f) => fail('ERROR frame: ' + f.headers.message);
client.onConnect = (frame) => {
  connectedHeaders = frame.headers;
  client.subscribe('/user/queue/notify', (m) => {
    notify += 1;
    out({ event: 'message', destination: m.headers.destination, subscription: m.headers.subscription,
          contentType: m.headers['content-type'], body: JSON.parse(m.body) });
    maybeDone();
  }, { id: 'sub-0' });
  client.subscribe('/user/queue/echo', (m) => { echoed = JSON.parse(m.body); maybeDone(); }, { id: 'sub-1' });
  const receipt = 'ready-' + Date.now();
  client.watchForReceipt(receipt, () => {
    client.publish({ destination: '/app/echo', headers: { 'Content-type': 'application/json' },
                     body: JSON.stringify({ chatRoomId: 12, message: '안녕하세요' }) });
    out({ event: 'ready' });
  });
  client.publish({ destination: '/app/noop', headers: { receipt }, body: '{}' });
};

let finishing = false;
async function maybeDone() {
  if (finishing || notify < 2 || echoed === null) return;
  finishing = true;
  await client.deactivate();
  clearTimeout(timer);
  const receiptSeen = log.some((l) => l.includes('RECEIPT') ) ||
    log.some((l) => l.includes('Received data') && l.includes('close-'));
  const ok = connectedHeaders.version === '1.2' && connectedHeaders['user-name'] !== undefined &&
    echoed.message === '안녕하세요';
  out({ event: 'done', ok, receiptSeen, version: connectedHeaders.version,
        user: connectedHeaders['user-name'], heartBeat: connectedHeaders['heart-beat'], echoed });
  process.exit(ok ? 0 : 1);
}
client.activate();
