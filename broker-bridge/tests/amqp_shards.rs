//! Command shards spread over every command worker (process with handlers), against the shared
//! RabbitMQ and Redis (`INSTAR_TEST_AMQP_URL`, `INSTAR_TEST_REDIS_URL`).
//!
//! Each worker runs on its own thread and current-thread runtime with its own Redis and RabbitMQ
//! connections, like a process. A worker is "killed" by leaving its runtime without any clean-up:
//! its tasks stop at once and its sockets close, which is what the broker and Redis see of a
//! SIGKILL (no AMQP close, no lease released).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker_bridge::{
    AmqpConfig, AppCommand, Bus, NodeId, RedisRegistryConfig, Registry, handler_fn,
};
use common::{clean_redis, eventually, service, unique};

const SHARDS: u16 = 8;
const SESSIONS: usize = 48;
/// Sessions share rooms: session `s` sends to room `s % ROOMS` (its order key), as chat senders do.
const ROOMS: usize = 6;
const WORKER_TTL: Duration = Duration::from_millis(1200);

#[derive(Clone)]
struct Env {
    amqp: String,
    redis: String,
    prefix: String,
}

impl Env {
    fn config(&self) -> AmqpConfig {
        AmqpConfig {
            node_queue_expires: Duration::from_secs(20),
            work_shards: SHARDS,
            worker_lease_ttl: WORKER_TTL,
            ..AmqpConfig::new(&self.amqp).with_prefix(&self.prefix)
        }
    }

    async fn bus(&self) -> Bus {
        let registry = Registry::redis(
            RedisRegistryConfig::new(&self.redis)
                .with_prefix(format!("{}:", self.prefix))
                .with_lease_ttl(Duration::from_secs(2)),
        )
        .await
        .unwrap();
        Bus::amqp(registry, self.config()).await.unwrap()
    }
}

/// What every worker's handler writes down.
#[derive(Default)]
struct Journal {
    /// Per session, the sequence numbers in the order they were handled (by any worker).
    handled: Mutex<HashMap<usize, Vec<usize>>>,
    /// Per session, the worker running one of its commands right now.
    running: Mutex<HashMap<usize, usize>>,
    /// A session's commands seen running in two live workers at once.
    overlaps: AtomicU64,
    /// Per room, the workers running its commands right now (and how many each).
    rooms_running: Mutex<HashMap<usize, HashMap<usize, usize>>>,
    /// A room's commands seen running in two live workers at once.
    room_overlaps: AtomicU64,
    /// Workers killed (their unfinished handlers never leave `running`).
    dead: [AtomicBool; 3],
    /// Commands handled per worker.
    per_worker: [AtomicU64; 3],
}

/// One worker "process": its metrics (shards owned, rebalances) and its kill switch.
struct Worker {
    owned: Arc<AtomicU64>,
    rebalances: Arc<AtomicU64>,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    fn start(env: &Env, index: usize, journal: Arc<Journal>) -> Worker {
        let owned = Arc::new(AtomicU64::new(0));
        let rebalances = Arc::new(AtomicU64::new(0));
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        let (env, o, r) = (env.clone(), owned.clone(), rebalances.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let bus = rt.block_on(async {
                let bus = env.bus().await;
                bus.register_handler(
                    "/app/",
                    handler_fn(move |cmd: AppCommand| {
                        let journal = journal.clone();
                        async move {
                            let session: usize =
                                cmd.session.trim_start_matches('s').parse().unwrap();
                            let seq: usize = cmd.headers[0].1.parse().unwrap();
                            {
                                let mut running = journal.running.lock().unwrap();
                                if let Some(&other) = running.get(&session)
                                    && other != index
                                    && !journal.dead[other].load(Ordering::SeqCst)
                                {
                                    journal.overlaps.fetch_add(1, Ordering::SeqCst);
                                }
                                running.insert(session, index);
                            }
                            let room = session % ROOMS;
                            {
                                let mut rooms = journal.rooms_running.lock().unwrap();
                                let workers = rooms.entry(room).or_default();
                                if workers.iter().any(|(&w, &n)| {
                                    w != index && n > 0 && !journal.dead[w].load(Ordering::SeqCst)
                                }) {
                                    journal.room_overlaps.fetch_add(1, Ordering::SeqCst);
                                }
                                *workers.entry(index).or_default() += 1;
                            }
                            // Uneven handler times.
                            let micros =
                                u64::try_from((seq * 7919 + session * 104_729) % 2500).unwrap_or(0);
                            tokio::time::sleep(Duration::from_micros(micros)).await;
                            journal
                                .handled
                                .lock()
                                .unwrap()
                                .entry(session)
                                .or_default()
                                .push(seq);
                            journal.running.lock().unwrap().remove(&session);
                            if let Some(n) = journal
                                .rooms_running
                                .lock()
                                .unwrap()
                                .get_mut(&room)
                                .and_then(|w| w.get_mut(&index))
                            {
                                *n -= 1;
                            }
                            journal.per_worker[index].fetch_add(1, Ordering::SeqCst);
                            Ok(())
                        }
                    }),
                );
                let watch = bus.clone();
                let mut killed = killed;
                loop {
                    let m = watch.metrics();
                    o.store(m.work_shards_owned, Ordering::SeqCst);
                    r.store(m.work_rebalances, Ordering::SeqCst);
                    tokio::select! {
                        _ = &mut killed => break,
                        () = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
                bus
            });
            // Killed: the runtime stops here, with no clean-up (no AMQP close, no lease release).
            drop(rt);
            drop(bus);
        });
        Worker {
            owned,
            rebalances,
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    fn owned(&self) -> u64 {
        self.owned.load(Ordering::SeqCst)
    }

    fn kill(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Two, then three workers share the eight shards (each consumes), a hand-over on a join loses,
/// repeats and reorders nothing, and when one worker is killed the survivors take its shards
/// within the worker lease plus a few seconds; the redelivered commands are then its unfinished
/// ones only, and every session's commands are still handled in order. Commands are keyed by
/// room ([`broker_bridge::ORDER_KEY_HEADER`]), several sessions to a room: a room's commands never
/// run in two live workers at once (keyed by session, as before, they did thousands of times).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_shards_spread_over_workers_and_move_when_one_dies() {
    let (Some(amqp), Some(redis)) = (
        service("INSTAR_TEST_AMQP_URL"),
        service("INSTAR_TEST_REDIS_URL"),
    ) else {
        return;
    };
    let env = Env {
        amqp,
        redis,
        prefix: unique("shards"),
    };
    let gateway = env.bus().await;
    let journal = Arc::new(Journal::default());

    // Steady load: one command per session every few milliseconds, in per-session order.
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (gateway, stop) = (gateway.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seq = 0usize;
            while !stop.load(Ordering::SeqCst) {
                // One round at a time: a session's command `seq` is confirmed before `seq + 1`.
                let round = (0..SESSIONS).map(|s| {
                    gateway.submit(AppCommand {
                        destination: "/app/send".into(),
                        principal: "alice".into(),
                        session: format!("s{s}"),
                        node: NodeId::from("gw-1"),
                        headers: vec![
                            ("seq".into(), seq.to_string()),
                            (
                                broker_bridge::ORDER_KEY_HEADER.into(),
                                format!("chatRoomId:{}", s % ROOMS),
                            ),
                        ],
                        body: bytes::Bytes::from_static(b"{}"),
                    })
                });
                for result in futures_util::future::join_all(round).await {
                    result.unwrap();
                }
                seq += 1;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            seq
        })
    };

    let mut w0 = Worker::start(&env, 0, journal.clone());
    eventually(
        Duration::from_secs(10),
        "one worker owns every shard",
        || {
            let owned = w0.owned();
            async move { owned == u64::from(SHARDS) }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut w1 = Worker::start(&env, 1, journal.clone());
    eventually(
        Duration::from_secs(10),
        "two workers share the shards",
        || {
            let owned = (w0.owned(), w1.owned());
            async move { owned == (4, 4) }
        },
    )
    .await;
    let handled_w1 = journal.per_worker[1].load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        journal.per_worker[1].load(Ordering::SeqCst) > handled_w1,
        "the second worker consumes"
    );

    let mut w2 = Worker::start(&env, 2, journal.clone());
    eventually(
        Duration::from_secs(10),
        "three workers share the shards",
        || {
            let owned = [w0.owned(), w1.owned(), w2.owned()];
            async move {
                owned.iter().sum::<u64>() == u64::from(SHARDS) && owned.iter().all(|&n| n >= 2)
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (i, n) in journal.per_worker.iter().enumerate() {
        assert!(n.load(Ordering::SeqCst) > 0, "worker {i} consumed nothing");
    }
    // Hand-overs on joins are clean: nothing handled twice so far, nothing out of order.
    let duplicates_before_kill = duplicates(&journal);
    assert_eq!(duplicates_before_kill, 0, "a hand-over repeated commands");

    // SIGKILL of worker 1: the survivors take its shards.
    journal.dead[1].store(true, Ordering::SeqCst);
    let killed = Instant::now();
    w1.kill();
    eventually(
        Duration::from_secs(15),
        "the survivors own every shard",
        || {
            let owned = (w0.owned(), w2.owned());
            async move { owned.0 + owned.1 == u64::from(SHARDS) && owned.0 >= 4 && owned.1 >= 4 }
        },
    )
    .await;
    let took = killed.elapsed();
    // The worker lease (1.2 s) plus a refresh period, and generous slack for a loaded machine.
    assert!(
        took < Duration::from_secs(6),
        "shards taken over after {took:?}"
    );
    let after = [0, 2].map(|i| journal.per_worker[i].load(Ordering::SeqCst));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::SeqCst);
    let sent = producer.await.unwrap();

    eventually(Duration::from_secs(20), "every command handled", || {
        let complete = journal
            .handled
            .lock()
            .unwrap()
            .values()
            .map(|seqs| distinct(seqs))
            .sum::<usize>()
            == SESSIONS * sent;
        async move { complete }
    })
    .await;
    for (i, before) in [0, 2].into_iter().zip(after) {
        assert!(
            journal.per_worker[i].load(Ordering::SeqCst) > before,
            "survivor {i} kept consuming"
        );
    }
    // Per-session order: the first handling of each command in sequence. A command the killed
    // worker had started (or prefetched) may run once more on the survivor: at most one prefetch
    // window per shard it held.
    let handled = journal.handled.lock().unwrap().clone();
    for (session, seqs) in &handled {
        let mut next = 0;
        for &seq in seqs {
            if seq == next {
                next += 1;
            } else {
                assert!(
                    seq < next,
                    "session {session}: {seq} before {next} ({seqs:?})"
                );
            }
        }
        assert_eq!(next, sent, "session {session} lost commands");
    }
    let total_duplicates = duplicates(&journal);
    assert!(
        total_duplicates <= 4 * 64,
        "{total_duplicates} commands handled twice"
    );
    assert_eq!(
        journal.overlaps.load(Ordering::SeqCst),
        0,
        "a session's commands ran in two live workers at once"
    );
    assert_eq!(
        journal.room_overlaps.load(Ordering::SeqCst),
        0,
        "a room's commands ran in two live workers at once"
    );
    assert!(w0.rebalances.load(Ordering::SeqCst) >= 3);
    eprintln!(
        "handled per worker {:?}, shard take-over after {took:?}, {total_duplicates} redelivered after the kill",
        journal
            .per_worker
            .iter()
            .map(|n| n.load(Ordering::SeqCst))
            .collect::<Vec<_>>()
    );
    w0.kill();
    w2.kill();
    gateway.shutdown().await;
    clean_redis(&env.redis, &format!("{}:", env.prefix)).await;
    env.config().delete_topology().await.unwrap();
}

fn distinct(seqs: &[usize]) -> usize {
    seqs.iter().collect::<std::collections::HashSet<_>>().len()
}

fn duplicates(journal: &Journal) -> usize {
    journal
        .handled
        .lock()
        .unwrap()
        .values()
        .map(|seqs| seqs.len() - distinct(seqs))
        .sum()
}
