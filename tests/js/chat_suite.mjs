// The chat suite with the frontend's own client stack: @stomp/stompjs over sockjs-client for
// STOMP, fetch for REST. Three users (alice, bob, carol): a DM with send, receive and read
// receipts, a forged sender, a non-member's SUBSCRIBE refused, a group with invite, leave (the
// leaver stops receiving at once) and rejoin, history pages, and missed-message recovery by
// resubscribing with the last message id seen, after a reconnect to another node when a gateway
// is killed.
//
// Usage: node chat_suite.mjs <config.json>
//   {"rest": "http://host:port", "ws": ["http://node1/ws", "http://node2/ws"],
//    "ids": {"alice": "<user id>", "bob": "...", "carol": "..."},
//    "tokens": {"alice": "<jwt>", "bob": "...", "carol": "..."}, "kill": false}
// With "kill": true, bob's node is killed mid-conversation: the suite prints
// {"event":"kill","url":<bob's SockJS URL>} and waits for a line "killed" on stdin.
// Prints one JSON line per passed check ({"event":"ok","check":...}) and {"event":"done"} (exit 0),
// or {"event":"failed","why":...} (exit 1).
import { createRequire } from 'node:module';
import path from 'node:path';
import fs from 'node:fs';
import readline from 'node:readline';

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
setTimeout(() => fail('suite timeout'), 120000).unref();
const ID = cfg.ids;
const ok = (check) => out({ event: 'ok', check });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
function assert(cond, what) { if (!cond) throw new Error('assertion failed: ' + what); }
function eq(a, b, what) {
  if (JSON.stringify(a) !== JSON.stringify(b)) {
    throw new Error(`${what}: expected ${JSON.stringify(b)}, got ${JSON.stringify(a)}`);
  }
}

const stdin = readline.createInterface({ input: process.stdin });
const stdinLines = [];
let stdinWaiter = null;
stdin.on('line', (l) => { if (stdinWaiter) { const w = stdinWaiter; stdinWaiter = null; w(l); } else stdinLines.push(l); });
const nextStdin = () => stdinLines.length ? Promise.resolve(stdinLines.shift()) : new Promise((r) => { stdinWaiter = r; });

async function rest(user, method, p, body) {
  const headers = { Authorization: 'Bearer ' + cfg.tokens[user] };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(cfg.rest + '/api/' + p, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

// A queue of received messages per destination, with waiting.
class Inbox {
  constructor() { this.items = []; this.waiters = []; }
  push(m) {
    this.items.push(m);
    this.waiters = this.waiters.filter((w) => !w.try());
  }
  next(pred = () => true, ms = 10000) {
    const caller = new Error('no message in time').stack;
    return new Promise((resolve, reject) => {
      const w = {
        try: () => {
          const i = this.items.findIndex(pred);
          if (i < 0) return false;
          clearTimeout(w.timer);
          resolve(this.items.splice(i, 1)[0]);
          return true;
        },
      };
      if (w.try()) return;
      w.timer = setTimeout(() => { this.waiters = this.waiters.filter((x) => x !== w); reject(new Error(caller + '\nreceived: ' + JSON.stringify(this.items.map((m) => [m.destination, m.body])))); }, ms);
      this.waiters.push(w);
    });
  }
  async none(pred = () => true, ms = 500) {
    await sleep(ms);
    const found = this.items.filter(pred);
    assert(found.length === 0, 'unexpected message ' + JSON.stringify(found[0] && found[0].body));
  }
}

let subSeq = 0;
class User {
  constructor(name, url) { this.name = name; this.url = url; this.inbox = new Inbox(); this.subs = {}; }
  connect() {
    return new Promise((resolve, reject) => {
      this.errors = [];
      this.client = new Client({
        connectHeaders: { Authorization: 'Bearer ' + cfg.tokens[this.name] },
        heartbeatIncoming: 10000,
        heartbeatOutgoing: 10000,
        reconnectDelay: 0,
        webSocketFactory: () => new SockJS(this.url),
        debug: () => {},
      });
      this.client.onConnect = () => resolve();
      this.client.onStompError = (f) => { this.errors.push(f.headers.message); reject(new Error(f.headers.message)); };
      this.client.onWebSocketClose = () => { this.closed = true; reject(new Error('socket closed')); };
      this.closed = false;
      this.client.activate();
    });
  }
  // Subscribes and resolves once the gateway confirmed it with a receipt (after any replay).
  subscribe(destination, extra = {}) {
    return new Promise((resolve) => {
      const id = 'sub-' + (++subSeq);
      const receipt = 'r-' + id;
      this.client.watchForReceipt(receipt, () => resolve(id));
      this.subs[destination] = this.client.subscribe(destination, (m) => {
        this.inbox.push({ destination: m.headers.destination, headers: m.headers, body: JSON.parse(m.body) });
      }, { id, receipt, ...extra });
    });
  }
  send(destination, body) { this.client.publish({ destination, body: JSON.stringify(body) }); }
  async disconnect() { await this.client.deactivate(); }
}

const chatOf = (room) => (m) => m.destination === `/topic/chat.${room}`;
const alarm = (type, room) => (m) => m.destination === '/user/queue/notify' && m.body.alarmType === type && (room === undefined || String(m.body.chatRoomId) === String(room));

async function main() {
  const urls = cfg.ws;
  const alice = new User('alice', urls[0]);
  const bob = new User('bob', urls[1 % urls.length]);
  const carol = new User('carol', urls[2 % urls.length]);
  for (const u of [alice, bob, carol]) { await u.connect(); await u.subscribe('/user/queue/notify'); }
  ok('three users connected over SockJS');

  // --- DM: create, send, receive, forged sender, read receipts ---
  let r = await rest('alice', 'POST', 'chat/create', { users: [ID.bob] });
  eq(r.status, 200, 'create DM'); eq(r.body.code, 'SC', 'create DM code');
  const dm = r.body.chatRoomId;
  await alice.inbox.next(alarm('CREATE_ROOM'));
  await bob.inbox.next(alarm('CREATE_ROOM'));
  r = await rest('bob', 'GET', 'chat/getList');
  assert(r.body.list.some((x) => x.chatroomId === dm && x.type === 'DIRECT'), 'DM in bob\'s list');
  for (const u of [alice, bob]) { await u.subscribe(`/topic/chat.${dm}`); await u.subscribe(`/topic/members.info.${dm}`); }
  alice.send('/app/send', { chatRoomId: dm, message: 'hello bob', senderId: ID.carol, senderName: 'Carol' });
  const m1 = await bob.inbox.next(chatOf(dm));
  eq([m1.body.senderId, m1.body.message, m1.body.type, m1.body.chatRoomId], [ID.alice, 'hello bob', 'TEXT', dm], 'bob receives');
  eq(m1.headers['x-instar-message-id'], String(m1.body.messageId), 'message id header');
  await alice.inbox.next(chatOf(dm));
  const chatAlarm = await bob.inbox.next(alarm('CHAT', dm));
  eq(chatAlarm.body.message, 'hello bob', 'CHAT alarm');
  ok('DM send and receive; forged senderId ignored');
  r = await rest('bob', 'GET', 'chat/getList');
  eq(r.body.list.find((x) => x.chatroomId === dm).unreadCount, 1, 'unread before reading');
  bob.send('/app/update/read', { chatRoomId: dm, messageId: m1.body.messageId });
  const receipt = await alice.inbox.next((m) => m.destination === `/topic/members.info.${dm}`);
  eq(receipt.body, { chatRoomId: dm, userId: ID.bob, lastReadMessageId: m1.body.messageId }, 'read receipt');
  r = await rest('bob', 'GET', 'chat/getList');
  eq(r.body.list.find((x) => x.chatroomId === dm).unreadCount, 0, 'unread after reading');
  r = await rest('alice', 'GET', `chat/get/members/read_info?chatRoomId=${dm}`);
  assert(r.body.list.some((x) => x.userId === ID.bob && x.lastReadMessageId === m1.body.messageId), 'read_info');
  // Backwards read pointers change nothing and publish nothing.
  bob.send('/app/update/read', { chatRoomId: dm, messageId: 1 });
  await alice.inbox.none((m) => m.destination === `/topic/members.info.${dm}`, 400);
  ok('read receipts move forward only');

  // --- A non-member may neither subscribe nor send ---
  const probe = new User('carol', urls[0]);
  await probe.connect();
  const refused = new Promise((resolve) => { probe.client.onStompError = (f) => resolve(f.headers.message); });
  probe.client.subscribe(`/topic/chat.${dm}`, () => fail('carol received a DM message'), { id: 'nope' });
  const why = await refused;
  assert(/not authorised/.test(why), 'refusal names the reason: ' + why);
  await probe.disconnect().catch(() => {});
  carol.send('/app/send', { chatRoomId: dm, message: 'let me in' });
  await sleep(300);
  r = await rest('alice', 'GET', `chat/history?chatRoomId=${dm}&messageId=`);
  assert(!r.body.list.some((x) => x.message === 'let me in'), 'non-member message not stored');
  ok('non-member SUBSCRIBE refused, SEND not stored');

  // --- Group: invite, leave (stops at once), rejoin ---
  r = await rest('alice', 'POST', 'chat/create', { users: [ID.bob] });
  eq(r.body.chatRoomId, dm, 'a DM with the same partner reuses the room');
  r = await rest('alice', 'POST', 'chat/create', { users: [ID.bob, ID.carol] });
  const group = r.body.chatRoomId;
  await carol.inbox.next(alarm('CREATE_ROOM'));
  for (const u of [alice, bob, carol]) await u.subscribe(`/topic/chat.${group}`);
  alice.send('/app/send', { chatRoomId: group, message: 'welcome all' });
  for (const u of [alice, bob, carol]) eq((await u.inbox.next(chatOf(group))).body.message, 'welcome all', u.name + ' group message');
  r = await rest('carol', 'DELETE', `chat/room/leave?chatRoomId=${group}`);
  eq(r.body.code, 'SC', 'leave');
  await carol.inbox.next(alarm('LEAVE_ROOM'));
  const leaveMsg = await bob.inbox.next(chatOf(group));
  eq(leaveMsg.body.type, 'LEAVE', 'LEAVE system message');
  alice.send('/app/send', { chatRoomId: group, message: 'carol is gone' });
  eq((await bob.inbox.next(chatOf(group))).body.message, 'carol is gone', 'bob still receives');
  // Nothing of the room reaches her, her own LEAVE included: the revokes go out before it.
  await carol.inbox.none((m) => chatOf(group)(m), 500);
  carol.inbox.items = carol.inbox.items.filter((m) => !chatOf(group)(m));
  r = await rest('carol', 'GET', `chat/history?chatRoomId=${group}&messageId=`);
  eq(r.status, 400, 'a leaver cannot read history');
  ok('a member who leaves stops receiving at once');
  r = await rest('alice', 'POST', 'chat/invite/user', { users: [ID.carol], chatRoomId: group });
  eq(r.body.code, 'SC', 'invite');
  await carol.inbox.next(alarm('INVITE_ROOM'));
  const invite = await bob.inbox.next(chatOf(group));
  eq(invite.body.type, 'INVITE', 'INVITE system message');
  carol.subs[`/topic/chat.${group}`].unsubscribe();
  await carol.subscribe(`/topic/chat.${group}`);
  bob.send('/app/send', { chatRoomId: group, message: 'welcome back' });
  eq((await carol.inbox.next(chatOf(group))).body.message, 'welcome back', 'rejoined member receives');
  r = await rest('carol', 'GET', `chat/history?chatRoomId=${group}&messageId=`);
  assert(!r.body.list.some((x) => x.message === 'carol is gone'), 'history from the invitation on');
  ok('invite and rejoin');

  // --- History pages (30 per page, newest first, keyset by messageId) ---
  const sent = [];
  for (let i = 0; i < 40; i++) { alice.send('/app/send', { chatRoomId: dm, message: `page ${i}` }); }
  for (let i = 0; i < 40; i++) sent.push((await bob.inbox.next(chatOf(dm))).body);
  for (let i = 0; i < 40; i++) await alice.inbox.next(chatOf(dm));
  eq(sent.map((m) => m.message), [...Array(40).keys()].map((i) => `page ${i}`), 'live order');
  let page = await rest('bob', 'GET', `chat/history?chatRoomId=${dm}&messageId=`);
  eq(page.body.list.length, 30, 'first page');
  const seen = page.body.list.map((m) => m.messageId);
  page = await rest('bob', 'GET', `chat/history?chatRoomId=${dm}&messageId=${seen[seen.length - 1]}`);
  seen.push(...page.body.list.map((m) => m.messageId));
  eq(seen.length, 41, 'two pages hold the 41 DM messages');
  assert(seen.every((id, i) => i === 0 || id < seen[i - 1]), 'newest first, no overlap');
  page = await rest('bob', 'GET', `chat/history?chatRoomId=${dm}&messageId=${seen[seen.length - 1]}`);
  eq(page.body.list, [], 'end of history');
  ok('history pages');

  // --- Recovery: bob goes away (node killed, or disconnect), alice keeps talking ---
  let last = sent[sent.length - 1].messageId;
  if (cfg.kill) {
    out({ event: 'kill', url: bob.url });
    const closed = new Promise((resolve) => { bob.client.onWebSocketClose = resolve; });
    const line = await nextStdin();
    eq(line.trim(), 'killed', 'kill acknowledgement');
    await closed;
  } else {
    await bob.disconnect();
  }
  const missed = [];
  for (let i = 0; i < 5; i++) missed.push(`missed ${i}`);
  for (const text of missed) alice.send('/app/send', { chatRoomId: dm, message: text });
  for (const text of missed) eq((await alice.inbox.next(chatOf(dm))).body.message, text, 'alice sees her own');
  // Reconnect (to the surviving node when one was killed) and resubscribe with the last id seen.
  const back = new User('bob', cfg.kill ? urls.find((u) => u !== bob.url) || urls[0] : bob.url);
  await back.connect();
  await back.subscribe(`/topic/chat.${dm}`, { 'x-instar-last-message-id': String(last) });
  // Every replayed message arrived before the receipt, marked, in order, once.
  const replayed = back.inbox.items.filter(chatOf(dm));
  eq(replayed.map((m) => m.body.message), missed, 'replayed exactly the missed messages');
  assert(replayed.every((m) => m.headers['x-instar-replayed'] === 'true'), 'replayed frames are marked');
  back.inbox.items = [];
  alice.send('/app/send', { chatRoomId: dm, message: 'live again' });
  const live = await back.inbox.next(chatOf(dm));
  eq(live.body.message, 'live again', 'live after replay');
  assert(live.headers['x-instar-replayed'] === undefined, 'live frames are not marked');
  await back.inbox.none(chatOf(dm), 300);
  ok(cfg.kill ? 'gateway killed: every message recovered on the survivor' : 'reconnect: every missed message replayed');

  for (const u of [alice, carol, back]) await u.disconnect();
  out({ event: 'done' });
  process.exit(0);
}

main().catch(fail);
