// Smoke check run by `scripts/test --setup-only`: one STOMP round trip through
// RabbitMQ Web-STOMP with @stomp/stompjs + ws, as the conformance tests do.
// Run with NODE_PATH=$INSTAR_NODE_PATH (CommonJS `require` honours NODE_PATH; ESM `import` does not).
'use strict';
const { Client } = require('@stomp/stompjs');
const WebSocket = require('ws');
require('sockjs-client'); // only checks that it is installed

Object.assign(globalThis, { WebSocket }); // Node 20 has no global WebSocket

const url = process.env.INSTAR_TEST_RABBIT_WEB_STOMP || 'ws://127.0.0.1:15674/ws';
const dest = `/queue/instar-smoke-node-${process.pid}-${Date.now()}`;
const started = Date.now();
const timer = setTimeout(() => {
  console.error(`node smoke: no round trip through ${url} within 15 s`);
  process.exit(1);
}, 15000);

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
    clearTimeout(timer);
    client.deactivate().then(() => process.exit(0));
  }, { 'auto-delete': 'true' });
  client.publish({ destination: dest, body: 'hello' });
};
client.onStompError = (f) => { console.error('node smoke: STOMP ERROR', f.headers.message); process.exit(1); };
client.onWebSocketError = (e) => { console.error('node smoke: WebSocket error', e && e.message); process.exit(1); };
client.activate();
