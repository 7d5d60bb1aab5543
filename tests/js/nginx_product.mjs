// The live half of the through-nginx scale-out test, with the frontend's own client stack
// (@stomp/stompjs over sockjs-client, fetch), against one origin: nginx in front of two gateway
// nodes and two social processes.
//
// Usage: node nginx_product.mjs <config.json>
//   {"site": "http://127.0.0.1:PORT", "ids": {"alice": "<user id>", "bob": "..."},
//    "tokens": {"alice": "<jwt>", "bob": "..."}, "nodes": {"alice": "<node id>", "bob": "<node id>"},
//    "alarms": ["FOLLOW", ...]}
// 1. alice connects over SockJS (websocket transport) and bob over SockJS xhr-streaming (several
//    HTTP requests per session: nginx must keep them on one node); each reconnects until its
//    session is on its node (the CONNECTED frame's session id starts with the node id), so the two
//    are on different gateways. Both subscribe to /user/queue/notify (confirmed by receipts), then
//    {"event":"ready"} is printed.
// 2. bob's alarms listed in "alarms" arrive in that order: {"event":"alarm","body":...} each.
// 3. chat: alice creates a DM over REST, both subscribe to the room's topics, messages go both
//    ways between the gateways, bob's read receipt reaches alice, the history lists both.
// Ends with {"event":"done"} (exit 0), or {"event":"failed","why":...} (exit 1).
import { createRequire } from 'node:module';
import path from 'node:path';
import fs from 'node:fs';

const nodePath = process.env.INSTAR_NODE_PATH;
if (!nodePath) { console.error('INSTAR_NODE_PATH is not set: run scripts/test'); process.exit(2); }
const require = createRequire(path.join(nodePath, 'noop.js'));
const { Client } = require('@stomp/stompjs');
const WebSocket = require('ws');
const SockJS = require('sockjs-client');
Object.assign(globalThis, { WebSocket });

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const fail = (why) => { out({ event: 'failed', why: String(why && why.stack || why) }); process.exit(1); };
process.on('unhandledRejection', fail);
setTimeout(() => fail('timeout'), 90000).unref();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
function eq(a, b, what) {
  if (JSON.stringify(a) !== JSON.stringify(b)) {
    throw new Error(`${what}: expected ${JSON.stringify(b)}, got ${JSON.stringify(a)}`);
  }
}

async function rest(user, method, p, body) {
  const headers = { Authorization: 'Bearer ' + cfg.tokens[user] };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(cfg.site + '/api/' + p, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

class Inbox {
  constructor() { this.items = []; this.waiters = []; }
  push(m) { this.items.push(m); this.waiters = this.waiters.filter((w) => !w()); }
  next(pred, what, ms = 15000) {
    return new Promise((resolve, reject) => {
      let timer;
      const w = () => {
        const i = this.items.findIndex(pred);
        if (i < 0) return false;
        clearTimeout(timer);
        resolve(this.items.splice(i, 1)[0]);
        return true;
      };
      if (w()) return;
      timer = setTimeout(() => reject(new Error(`no ${what} in time; received: ` + JSON.stringify(this.items.map((m) => [m.destination, m.body])))), ms);
      this.waiters.push(w);
    });
  }
}

let subSeq = 0;
class User {
  constructor(name, transports) { this.name = name; this.transports = transports; this.inbox = new Inbox(); }
  // One connection attempt; resolves with the session id of the CONNECTED frame.
  connectOnce() {
    return new Promise((resolve, reject) => {
      this.client = new Client({
        connectHeaders: { Authorization: 'Bearer ' + cfg.tokens[this.name] },
        heartbeatIncoming: 10000,
        heartbeatOutgoing: 10000,
        reconnectDelay: 0,
        webSocketFactory: () => new SockJS(cfg.site + '/ws', null, { transports: this.transports }),
        debug: () => {},
      });
      this.client.onConnect = (frame) => resolve(frame.headers.session || '');
      this.client.onStompError = (f) => reject(new Error(`${this.name}: ERROR ${f.headers.message}`));
      this.client.onWebSocketClose = () => reject(new Error(`${this.name}: socket closed`));
      this.client.activate();
    });
  }
  // Connects until the session is on `node`.
  async connectOn(node) {
    for (let attempt = 0; attempt < 30; attempt++) {
      const session = await this.connectOnce();
      if (session.startsWith(node + '-')) {
        this.session = session;
        this.client.onWebSocketClose = () => fail(`${this.name}: socket closed`);
        return;
      }
      await this.client.deactivate();
    }
    throw new Error(`${this.name} never landed on ${node}`);
  }
  subscribe(destination) {
    return new Promise((resolve) => {
      const id = 'sub-' + (++subSeq);
      const receipt = 'r-' + id;
      this.client.watchForReceipt(receipt, () => resolve(id));
      this.client.subscribe(destination, (m) => {
        this.inbox.push({ destination: m.headers.destination, headers: m.headers, body: JSON.parse(m.body) });
      }, { id, receipt });
    });
  }
  send(destination, body) { this.client.publish({ destination, body: JSON.stringify(body) }); }
}

const alarm = (type) => (m) => m.destination === '/user/queue/notify' && m.body.alarmType === type;

async function main() {
  const alice = new User('alice', ['websocket']);
  const bob = new User('bob', ['xhr-streaming']);
  await alice.connectOn(cfg.nodes.alice);
  await bob.connectOn(cfg.nodes.bob);
  for (const u of [alice, bob]) await u.subscribe('/user/queue/notify');
  out({ event: 'ready', sessions: { alice: alice.session, bob: bob.session } });

  for (const type of cfg.alarms) {
    const m = await bob.inbox.next(alarm(type), `${type} alarm`);
    out({ event: 'alarm', body: m.body });
  }

  let r = await rest('alice', 'POST', 'chat/create', { users: [cfg.ids.bob] });
  eq([r.status, r.body.code], [200, 'SC'], 'create DM');
  const dm = r.body.chatRoomId;
  await bob.inbox.next(alarm('CREATE_ROOM'), 'CREATE_ROOM alarm');
  for (const u of [alice, bob]) {
    await u.subscribe(`/topic/chat.${dm}`);
    await u.subscribe(`/topic/members.info.${dm}`);
  }
  const chatOf = (m) => m.destination === `/topic/chat.${dm}`;
  alice.send('/app/send', { chatRoomId: dm, message: 'hello from gateway one' });
  const m1 = await bob.inbox.next(chatOf, 'alice\'s message at bob');
  eq([m1.body.senderId, m1.body.message, m1.body.chatRoomId], [cfg.ids.alice, 'hello from gateway one', dm], 'bob receives');
  await alice.inbox.next(chatOf, 'alice\'s own message');
  bob.send('/app/send', { chatRoomId: dm, message: 'hello from gateway two' });
  const m2 = await alice.inbox.next((m) => chatOf(m) && m.body.senderId === cfg.ids.bob, 'bob\'s message at alice');
  eq(m2.body.message, 'hello from gateway two', 'alice receives');
  bob.send('/app/update/read', { chatRoomId: dm, messageId: m2.body.messageId });
  const receipt = await alice.inbox.next((m) => m.destination === `/topic/members.info.${dm}`, 'read receipt');
  eq(receipt.body, { chatRoomId: dm, userId: cfg.ids.bob, lastReadMessageId: m2.body.messageId }, 'read receipt');
  r = await rest('bob', 'GET', `chat/history?chatRoomId=${dm}&messageId=`);
  eq([r.status, r.body.list.map((m) => m.message)], [200, ['hello from gateway two', 'hello from gateway one']], 'history');
  out({ event: 'chat', room: dm });
  for (const u of [alice, bob]) {
    u.client.onWebSocketClose = () => {};
    await u.client.deactivate();
  }
  out({ event: 'done' });
  process.exit(0);
}
main().catch(fail);
