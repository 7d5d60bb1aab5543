// @stomp/stompjs against the gateway as a broker for its own pub/sub (destination rules open
// /topic/js.** and /queue/**), over plain WebSocket (/stomp) or sockjs-client (/ws): receipts,
// queues shared round robin, ack/nack and redelivery, transactions, unsubscribe, non-ASCII bodies
// and escaped header values, binary bodies, topic order and wildcards.
// Usage: node stompjs_broker.mjs <ws|sockjs> <url> <token>
// Prints one JSON line {"event":"done","ok":bool,"checks":{name:true|"why"}}; exit 0 when all passed.
import { createRequire } from 'node:module';
import path from 'node:path';

const nodePath = process.env.INSTAR_NODE_PATH;
if (!nodePath) { console.error('INSTAR_NODE_PATH is not set: run scripts/test'); process.exit(2); }
const require = createRequire(path.join(nodePath, 'noop.js'));
const { Client } = require('@stomp/stompjs');
const WebSocket = require('ws');
const SockJS = require('sockjs-client');
Object.assign(globalThis, { WebSocket });

const [mode, url, token] = process.argv.slice(2);
const tag = Math.random().toString(36).slice(2, 10);
const checks = {};
const errors = [];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function connect() {
  return new Promise((resolve, reject) => {
    const client = new Client({
      connectHeaders: { Authorization: 'Bearer ' + token },
      heartbeatIncoming: 0,
      heartbeatOutgoing: 0,
      reconnectDelay: 0,
      debug: () => {},
    });
    if (mode === 'sockjs') {
      client.webSocketFactory = () => new SockJS(url, null, { transports: ['websocket'] });
    } else {
      client.brokerURL = url;
    }
    client.onStompError = (f) => { errors.push(f.headers.message); reject(new Error(f.headers.message)); };
    client.onConnect = () => resolve(client);
    client.activate();
  });
}

// A queue of received messages per subscription.
function inbox() {
  const items = [];
  const waiters = [];
  return {
    push: (m) => { const w = waiters.shift(); if (w) w(m); else items.push(m); },
    next: (ms = 5000) => new Promise((resolve) => {
      if (items.length) return resolve(items.shift());
      const t = setTimeout(() => { waiters.splice(waiters.indexOf(done), 1); resolve(null); }, ms);
      const done = (m) => { clearTimeout(t); resolve(m); };
      waiters.push(done);
    }),
  };
}

function receipt(client, send) {
  const id = 'r-' + Math.random().toString(36).slice(2, 10);
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('no RECEIPT ' + id)), 5000);
    client.watchForReceipt(id, () => { clearTimeout(t); resolve(); });
    send({ receipt: id });
  });
}

function subscribe(client, dest, headers = {}) {
  const box = inbox();
  let sub;
  return receipt(client, (h) => { sub = client.subscribe(dest, (m) => box.push(m), { ...headers, ...h }); })
    .then(() => ({ box, sub }));
}

const publish = (client, destination, body, headers = {}) =>
  receipt(client, (h) => client.publish({ destination, body, headers: { ...headers, ...h } }));

async function check(name, fn) {
  try { await fn(); checks[name] = true; } catch (e) { checks[name] = String(e && e.stack || e); }
}
function assert(cond, why) { if (!cond) throw new Error(why); }
async function quiet(box, ms = 300) { return (await box.next(ms)) === null; }

const timer = setTimeout(() => { console.log(JSON.stringify({ event: 'done', ok: false, checks, why: 'timeout' })); process.exit(1); }, 60000);
const a = await connect();
const b = await connect();
const p = await connect();

await check('receipts', async () => {
  await publish(p, '/queue/js-r-' + tag, 'x');
});

await check('round_robin', async () => {
  const q = '/queue/js-rr-' + tag;
  const sa = await subscribe(a, q, { ack: 'client-individual' });
  const sb = await subscribe(b, q, { ack: 'client-individual' });
  for (let i = 0; i < 6; i++) await publish(p, q, String(i));
  const got = { a: [], b: [] };
  for (const [name, s] of [['a', sa], ['b', sb]]) {
    for (let i = 0; i < 3; i++) {
      const m = await s.box.next();
      assert(m, name + ' got only ' + got[name]);
      got[name].push(Number(m.body));
      m.ack();
    }
  }
  assert(JSON.stringify(got) === '{"a":[0,2,4],"b":[1,3,5]}', JSON.stringify(got));
  sa.sub.unsubscribe(); sb.sub.unsubscribe();
});

await check('nack_redelivers_to_the_other_client', async () => {
  // stompjs's own ack spec: NACKed on one client, delivered to the other.
  const q = '/queue/js-nack-' + tag;
  const sa = await subscribe(a, q, { ack: 'client' });
  const sb = await subscribe(b, q, { ack: 'client' });
  await publish(p, q, 'hot potato');
  const first = await sa.box.next();
  assert(first && first.headers.redelivered === 'false', 'first delivery');
  first.nack();
  const again = (await sb.box.next()) || (await sa.box.next());
  assert(again && again.body === 'hot potato' && again.headers.redelivered === 'true', 'redelivered');
  again.ack();
  sa.sub.unsubscribe(); sb.sub.unsubscribe();
});

await check('disconnect_redelivers', async () => {
  const q = '/queue/js-drop-' + tag;
  const c = await connect();
  const sc = await subscribe(c, q, { ack: 'client' });
  await publish(p, q, 'orphan');
  assert(await sc.box.next(), 'delivered to the leaver');
  await c.deactivate();
  const sb = await subscribe(b, q, { ack: 'client' });
  const m = await sb.box.next();
  assert(m && m.body === 'orphan' && m.headers.redelivered === 'true', 'redelivered after the leave');
  m.ack();
  sb.sub.unsubscribe();
});

await check('transactions', async () => {
  const q = '/queue/js-tx-' + tag;
  const sa = await subscribe(a, q, { ack: 'client-individual' });
  const t1 = p.begin();
  p.publish({ destination: q, body: 'aborted', headers: { transaction: t1.id } });
  t1.abort();
  assert(await quiet(sa.box), 'an aborted transaction delivered');
  const t2 = p.begin();
  p.publish({ destination: q, body: 'c1', headers: { transaction: t2.id } });
  p.publish({ destination: q, body: 'c2', headers: { transaction: t2.id } });
  assert(await quiet(sa.box), 'delivered before commit');
  t2.commit();
  const got = [await sa.box.next(), await sa.box.next()];
  assert(got.every(Boolean) && got.map((m) => m.body).join() === 'c1,c2', 'committed in order');
  // Acknowledgements in a transaction count only once committed.
  const t3 = a.begin();
  got.forEach((m) => m.ack(t3.id));
  t3.commit();
  sa.sub.unsubscribe();
});

await check('unsubscribe', async () => {
  const t = '/topic/js.un.' + tag;
  const sa = await subscribe(a, t);
  await receipt(a, (h) => sa.sub.unsubscribe(h));
  await publish(p, t, 'after');
  assert(await quiet(sa.box), 'delivered after unsubscribe');
});

await check('non_ascii_and_escaped_headers', async () => {
  const t = '/topic/js.text.' + tag;
  const sa = await subscribe(a, t);
  const body = 'Älä sinä yhtään and السابق 안녕하세요';
  const headers = { 'x-colon': 'a:b', 'x-backslash': 'c\\d', 'x-newline': 'e\nf', 'x-name': 'марко' };
  await publish(p, t, body, headers);
  const m = await sa.box.next();
  assert(m && m.body === body, 'body');
  for (const [k, v] of Object.entries(headers)) assert(m.headers[k] === v, k + '=' + JSON.stringify(m.headers[k]));
  // Binary body, with content-length (raw WebSocket only: SockJS carries text, and sockjs-client
  // turns a byte array into its decimal listing).
  if (mode === 'sockjs') { sa.sub.unsubscribe(); return; }
  const bin = new Uint8Array([0, 1, 2, 255, 254, 0, 10]);
  await receipt(p, (h) => p.publish({ destination: t, binaryBody: bin, headers: { 'content-type': 'application/octet-stream', ...h } }));
  const mb = await sa.box.next();
  assert(mb && Buffer.from(mb.binaryBody).equals(Buffer.from(bin)), 'binary body');
  sa.sub.unsubscribe();
});

await check('topic_order_and_wildcards', async () => {
  const t = '/topic/js.order.' + tag;
  const sa = await subscribe(a, t);
  const sw = await subscribe(b, '/topic/js.order.#');
  for (let i = 0; i < 50; i++) p.publish({ destination: t, body: String(i) });
  await publish(p, t, 'end');
  for (const s of [sa, sw]) {
    const bodies = [];
    for (let i = 0; i < 51; i++) { const m = await s.box.next(); bodies.push(m && m.body); }
    assert(bodies.join() === [...Array(50).keys()].join() + ',end', bodies.slice(0, 5).join());
  }
  sa.sub.unsubscribe(); sw.sub.unsubscribe();
});

for (const c of [a, b, p]) await c.deactivate();
clearTimeout(timer);
const ok = Object.values(checks).every((v) => v === true) && errors.length === 0;
console.log(JSON.stringify({ event: 'done', ok, checks, errors }));
process.exit(ok ? 0 : 1);
