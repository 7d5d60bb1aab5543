//! The HTTP accept loop every command serves its routes through (`instar serve`'s one port, a
//! gateway node's, `instar social`'s): REST, `/ws` and `/stomp` alike.
//!
//! warp 0.4's own server takes no timeouts or caps (its acceptor trait is sealed), so the routes
//! run as a [`warp::service`] on hyper-util's connection builder, accepted here:
//!
//! - **caps**: at most [`HttpLimits::max_connections`] connections at once (never more than the
//!   file-descriptor limit allows with [`fd_reserve`] kept free for the database, Redis, logs
//!   and health checks) and [`HttpLimits::max_connections_per_address`] from one address (IPv6
//!   grouped by /64; proxies listed in [`HttpLimits::cap_exempt`] are not capped). One more is
//!   answered `503` with `Connection: close` at once (one non-blocking write, no parsing) and
//!   counted. A WebSocket keeps its place until it closes.
//! - **timeouts**: the head of every request must arrive within
//!   [`HttpLimits::header_timeout`] of the server starting to wait for it (on a new connection
//!   and between keep-alive requests, so it is also the keep-alive idle limit: hyper's header
//!   timer from the head's first byte, our watchdog before it); each piece of a request body within [`HttpLimits::body_timeout`] (the route then
//!   sees a read error and answers 4xx, and the connection closes); and a connection that moves
//!   no byte either way for [`HttpLimits::idle_timeout`] while a request is open (a stalled
//!   upload, a client that stops reading its response) is closed. The time a route spends
//!   working out its answer without waiting on the client (an administrator's synchronous
//!   batch run, a slow database) does not count: that silence is the server's. Upgraded connections
//!   (WebSocket) leave these timeouts: STOMP's CONNECT timeout and heart-beats govern them.
//! - **size**: a request head larger than [`HttpLimits::max_header_bytes`] is refused (431)
//!   before it is buffered further.
//!
//! HTTP/1.1 only (what browsers and nginx speak to it): an HTTP/2 connection's streams would need
//! limits of their own.
//!
//! The peer's socket address rides in each request's extensions as a plain
//! [`std::net::SocketAddr`] (warp's own `RemoteAddr` cannot be set from outside warp):
//! [`peer`] reads it, and the social service reads the same type (`social::public_url::peer`).

use std::collections::HashMap;
use std::future::Future as _;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use ipnet::IpNet;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use warp::Filter;

/// Limits of an HTTP listener (settings `http_*`, docs/operations.md "Abuse limits").
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Longest wait for a whole request head, from when the server starts waiting for it.
    pub header_timeout: Duration,
    /// Longest wait for the next piece of a request body.
    pub body_timeout: Duration,
    /// Longest time an open request's connection may move no byte either way.
    pub idle_timeout: Duration,
    /// Connections open at once (lowered to what the file-descriptor limit allows).
    pub max_connections: usize,
    /// Connections open at once from one address (IPv6: one /64); 0: unlimited.
    pub max_connections_per_address: usize,
    /// Addresses the per-address cap does not apply to (the proxies in front).
    pub cap_exempt: Vec<IpNet>,
    /// Largest request head, in bytes (at least 8192).
    pub max_header_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(20),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            max_connections: 10_000,
            max_connections_per_address: 512,
            cap_exempt: Vec::new(),
            max_header_bytes: 64 * 1024,
        }
    }
}

/// The listener's counters, copied to `/metrics` by [`ConnStats::update_metrics`].
#[derive(Debug, Default)]
pub struct ConnStats {
    open: AtomicU64,
    accepted: AtomicU64,
    refused_global: AtomicU64,
    refused_address: AtomicU64,
    header_timeouts: AtomicU64,
    body_timeouts: AtomicU64,
    idle_timeouts: AtomicU64,
    cap: AtomicU64,
}

/// One metric: name, type, help, and its values by label set.
type Row<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a [(Option<(&'a str, &'a str)>, &'a AtomicU64)],
);

impl ConnStats {
    /// Copies this listener's counts into `registry` (`instar_http_connections_*`,
    /// `instar_http_timeouts_total`).
    pub fn update_metrics(&self, registry: &broker_bridge::MetricsRegistry) {
        self.rows(registry, "http", "HTTP connections", true);
    }

    /// Copies the counts of the raw STOMP/TCP listener into `registry`
    /// (`instar_tcp_connections_*`; it has no HTTP timeouts: the CONNECT timeout and heart-beats
    /// govern it).
    pub fn update_tcp_metrics(&self, registry: &broker_bridge::MetricsRegistry) {
        self.rows(registry, "tcp", "STOMP/TCP connections", false);
    }

    fn rows(
        &self,
        registry: &broker_bridge::MetricsRegistry,
        prefix: &str,
        what: &str,
        timeouts: bool,
    ) {
        let open_help = format!("{what} open now.");
        let limit_help = format!(
            "Most {what} open at once (the setting, lowered to fit the file-descriptor limit)."
        );
        let total_help = format!("{what} accepted and served since start.");
        let refused_help = format!("{what} refused at accept, by the cap they met.");
        let rows: [Row<'_>; 5] = [
            (
                "connections_open",
                "gauge",
                if timeouts {
                    "HTTP connections open now (WebSockets included)."
                } else {
                    open_help.as_str()
                },
                &[(None, &self.open)],
            ),
            (
                "connections_limit",
                "gauge",
                limit_help.as_str(),
                &[(None, &self.cap)],
            ),
            (
                "connections_total",
                "counter",
                total_help.as_str(),
                &[(None, &self.accepted)],
            ),
            (
                "connections_refused_total",
                "counter",
                refused_help.as_str(),
                &[
                    (Some(("cap", "global")), &self.refused_global),
                    (Some(("cap", "address")), &self.refused_address),
                ],
            ),
            (
                "timeouts_total",
                "counter",
                "HTTP connections closed for a timeout, by kind.",
                &[
                    (Some(("kind", "header")), &self.header_timeouts),
                    (Some(("kind", "body")), &self.body_timeouts),
                    (Some(("kind", "idle")), &self.idle_timeouts),
                ],
            ),
        ];
        for (name, kind, help, values) in rows {
            if name == "timeouts_total" && !timeouts {
                continue;
            }
            let name = format!("instar_{prefix}_{name}");
            for (label, v) in values {
                let labels: &[(&str, &str)] = match label {
                    Some(l) => std::slice::from_ref(l),
                    None => &[],
                };
                let v = v.load(Relaxed);
                if kind == "gauge" {
                    #[allow(clippy::cast_precision_loss)]
                    registry.gauge_with(&name, labels, help).set(v as f64);
                } else {
                    registry.counter_with(&name, labels, help).absolute(v);
                }
            }
        }
    }
}

/// File descriptors kept free of HTTP connections out of a limit of `soft`: an eighth, at least
/// 128 (the database pool, Redis, the bus, log files, and a health check's connection).
pub fn fd_reserve(soft: u64) -> u64 {
    (soft / 8).max(128)
}

/// Raises this process's open-file soft limit to its hard limit and returns the connection cap
/// that fits under it: `wanted`, at most the soft limit less [`fd_reserve`] (at least 1).
pub fn connection_cap(wanted: usize) -> usize {
    let soft = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "could not read or raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    };
    let room = soft.saturating_sub(fd_reserve(soft)).max(1);
    let cap = usize::try_from(room)
        .unwrap_or(usize::MAX)
        .min(wanted.max(1));
    if cap < wanted {
        tracing::warn!(
            wanted,
            cap,
            open_file_limit = soft,
            "HTTP connection cap lowered to fit the open-file limit (raise LimitNOFILE)"
        );
    }
    cap
}

/// The peer's socket address of a request served by [`serve`] (or by warp's test client).
pub fn peer()
-> impl Filter<Extract = (Option<SocketAddr>,), Error = std::convert::Infallible> + Clone {
    warp::addr::remote()
        .and(warp::ext::optional::<SocketAddr>())
        .map(|warp: Option<SocketAddr>, ours: Option<SocketAddr>| ours.or(warp))
}

/// Groups an address for the per-address cap: IPv4 (and IPv4-mapped IPv6) as it is, IPv6 by /64.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Connections open per address group.
type PerAddress = Arc<parking_lot::Mutex<HashMap<IpAddr, usize>>>;

/// Connection caps: [`HttpLimits::max_connections`] (lowered to fit the file-descriptor limit)
/// and [`HttpLimits::max_connections_per_address`], except [`HttpLimits::cap_exempt`]. A gateway
/// node's HTTP listener and its raw STOMP/TCP listener take their places from one budget
/// ([`Caps::share`]): two budgets let the two listeners together hold twice the cap, and each
/// cap is sized to the open-file limit, so together they could run the process out of file
/// descriptors (its database, Redis and RabbitMQ connections included).
#[derive(Debug, Clone)]
pub struct Caps {
    global: Arc<Semaphore>,
    per_address: PerAddress,
    limits: Arc<HttpLimits>,
    stats: Arc<ConnStats>,
    cap: usize,
}

impl Caps {
    /// Caps under `limits`, counted in `stats`.
    pub fn new(limits: HttpLimits, stats: Arc<ConnStats>) -> Self {
        let cap = connection_cap(limits.max_connections);
        stats.cap.store(cap as u64, Relaxed);
        Self {
            global: Arc::new(Semaphore::new(cap)),
            per_address: Arc::default(),
            limits: Arc::new(limits),
            stats,
            cap,
        }
    }

    /// The same budget (global and per-address places, limits) for another listener, whose
    /// connections and refusals are counted in `stats`.
    pub fn share(&self, stats: Arc<ConnStats>) -> Self {
        stats.cap.store(self.cap as u64, Relaxed);
        Self {
            global: self.global.clone(),
            per_address: self.per_address.clone(),
            limits: self.limits.clone(),
            stats,
            cap: self.cap,
        }
    }

    /// The limits the places are taken under (and the listener's timeouts).
    pub fn limits(&self) -> &HttpLimits {
        &self.limits
    }

    /// A place for a connection from `ip` (held until dropped), or `None` when a cap is met
    /// (the refusal is counted).
    pub fn take(&self, ip: IpAddr) -> Option<Place> {
        let place = take_place(
            &self.global,
            &self.per_address,
            &self.limits,
            &self.stats,
            ip,
        )?;
        self.stats.accepted.fetch_add(1, Relaxed);
        Some(place)
    }
}

/// A place taken under the caps; given back when the connection's socket is dropped.
#[derive(Debug)]
pub struct Place {
    _global: OwnedSemaphorePermit,
    address: Option<(PerAddress, IpAddr)>,
    stats: Arc<ConnStats>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Relaxed);
        if let Some((map, key)) = &self.address {
            let mut map = map.lock();
            if let Some(n) = map.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
    }
}

/// When a connection last moved a byte, and whether a request is open on it (from its head to
/// the end of its response body), for the idle timeouts.
#[derive(Debug)]
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicU64,
    /// Requests whose route is still working out the response ([`Working`]).
    working: AtomicU64,
    /// Request bodies waiting for the client's next piece ([`TimedBody`]).
    body_waits: AtomicU64,
}

/// One open request of a connection ([`Activity::in_flight`]); closed on drop, which is when
/// hyper drops the response body (sent, or the connection gone).
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Relaxed);
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
        // The wait for the next request head starts now.
        self.0.touch();
    }
}

/// A request whose route has not answered yet ([`Activity::working`]). While a route works
/// (an admin's synchronous batch, a slow database) and waits on no request body, the silence is
/// the server's, not the client's: the idle timeout does not run.
#[derive(Debug)]
struct Working(Arc<Activity>);

impl Working {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.working.fetch_add(1, Relaxed);
        Self(activity.clone())
    }
}

impl Drop for Working {
    fn drop(&mut self) {
        self.0.working.fetch_sub(1, Relaxed);
        // From the response head on, the client must read it within the idle timeout.
        self.0.touch();
    }
}

/// A response body that keeps its request open ([`InFlight`]) until hyper drops it.
#[derive(Debug)]
struct Guarded<B> {
    inner: B,
    _open: InFlight,
}

impl<B: Body + Unpin> Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Relaxed))
    }
}

/// An accepted socket that records its activity and holds its place under the caps for as long
/// as it lives (through a WebSocket upgrade too).
#[derive(Debug)]
struct Tracked {
    io: TokioIo<TcpStream>,
    activity: Arc<Activity>,
    _place: Place,
}

impl hyper::rt::Read for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if r.is_ready() {
            self.activity.touch();
        }
        r
    }
}

impl hyper::rt::Write for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if r.is_ready() {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if r.is_ready() {
            self.activity.touch();
        }
        r
    }
}

/// A request body whose every piece must arrive within a timeout of the previous one.
#[derive(Debug)]
struct TimedBody {
    inner: Incoming,
    timeout: Duration,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    stats: Arc<ConnStats>,
    /// Counted in [`Activity::body_waits`] while `deadline` is set.
    activity: Arc<Activity>,
}

impl TimedBody {
    fn stop_waiting(&mut self) {
        if self.deadline.take().is_some() {
            self.activity.body_waits.fetch_sub(1, Relaxed);
        }
    }
}

impl Drop for TimedBody {
    fn drop(&mut self) {
        self.stop_waiting();
    }
}

/// The error a route sees when a request body stalls ([`HttpLimits::body_timeout`]).
#[derive(Debug, thiserror::Error)]
#[error("request body timed out")]
pub struct BodyTimeout;

impl Body for TimedBody {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                this.stop_waiting();
                Poll::Ready(r.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let activity = &this.activity;
                let deadline = this.deadline.get_or_insert_with(|| {
                    activity.body_waits.fetch_add(1, Relaxed);
                    Box::pin(tokio::time::sleep(timeout))
                });
                if deadline.as_mut().poll(cx).is_ready() {
                    this.stats.body_timeouts.fetch_add(1, Relaxed);
                    return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a refused connection is told before it is closed.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: 20\r\nretry-after: 1\r\n\r\ntoo many connections";

/// Serves `routes` on `listener` under `limits` until `shutdown` is cancelled, then lets open
/// requests finish (the caller bounds how long it waits for the returned future).
pub fn serve(
    routes: warp::filters::BoxedFilter<(Box<dyn warp::Reply>,)>,
    listener: TcpListener,
    limits: HttpLimits,
    stats: Arc<ConnStats>,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    serve_with(routes, listener, Caps::new(limits, stats), shutdown)
}

/// [`serve`] taking its places from `caps` (a budget it may share with another listener), under
/// their limits.
pub fn serve_with(
    routes: warp::filters::BoxedFilter<(Box<dyn warp::Reply>,)>,
    listener: TcpListener,
    caps: Caps,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let limits = caps.limits.clone();
    let stats = caps.stats.clone();
    let service = warp::service(routes);
    async move {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            let (stream, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Some(place) = caps.take(peer.ip()) else {
                // Best effort, never waiting: the socket's send buffer takes these bytes.
                let _ = stream.try_write(REFUSED);
                drop(stream);
                continue;
            };
            let activity = Arc::new(Activity {
                start: Instant::now(),
                last_ms: AtomicU64::new(0),
                in_flight: AtomicU64::new(0),
                working: AtomicU64::new(0),
                body_waits: AtomicU64::new(0),
            });
            let io = Tracked {
                io: TokioIo::new(stream),
                activity: activity.clone(),
                _place: place,
            };
            let (svc, limits, stats) = (service.clone(), limits.clone(), stats.clone());
            let body_timeout = limits.body_timeout;
            let body_stats = stats.clone();
            let request_activity = activity.clone();
            let hyper_svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                let open = InFlight::new(&request_activity);
                let working = Working::new(&request_activity);
                req.extensions_mut().insert(peer);
                let req = req.map(|inner| TimedBody {
                    inner,
                    timeout: body_timeout,
                    deadline: None,
                    stats: body_stats.clone(),
                    activity: request_activity.clone(),
                });
                let response = tower_service::Service::call(&mut svc.clone(), req);
                async move {
                    let response = response.await?;
                    drop(working);
                    Ok::<_, std::convert::Infallible>(
                        response.map(|inner| Guarded { inner, _open: open }),
                    )
                }
            });
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(limits.max_header_bytes.max(8192));
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let conn = builder.serve_connection_with_upgrades(io, hyper_svc);
                let conn = watcher.watch(conn);
                tokio::select! {
                    result = conn => {
                        if let Err(e) = result {
                            let timed_out = e
                                .downcast_ref::<hyper::Error>()
                                .is_some_and(hyper::Error::is_timeout);
                            if timed_out {
                                stats.header_timeouts.fetch_add(1, Relaxed);
                            } else {
                                tracing::debug!(error = %e, "HTTP connection error");
                            }
                        }
                    }
                    waiting = idle(&activity, limits.header_timeout, limits.idle_timeout) => {
                        if waiting {
                            stats.header_timeouts.fetch_add(1, Relaxed);
                        } else {
                            stats.idle_timeouts.fetch_add(1, Relaxed);
                        }
                    }
                }
            });
        }
        drop(listener);
        graceful.shutdown().await;
    }
}

/// Returns once `activity` has moved no byte for `waiting` while no request is open (true: a
/// connection that sends no request head; hyper's own header timer starts only at its first
/// byte), or for `open` while one is (false).
async fn idle(activity: &Activity, waiting: Duration, open: Duration) -> bool {
    loop {
        if activity.working.load(Relaxed) > 0 && activity.body_waits.load(Relaxed) == 0 {
            // A route is working and waits on no body piece of the client's (those have their
            // own timeout): the server's silence, not the client's. Look again later.
            tokio::time::sleep(waiting.min(open)).await;
            continue;
        }
        let between = activity.in_flight.load(Relaxed) == 0;
        let deadline = activity.last() + if between { waiting } else { open };
        let now = Instant::now();
        if now >= deadline {
            return between;
        }
        // A request may start or end meanwhile: look again within the shorter of the two limits
        // (a request that starts while this waits out a longer `waiting` must still be held to
        // `open`).
        let wake = deadline.min(now + waiting.min(open));
        tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
    }
}

/// Takes a place for a connection from `ip` under both caps, or counts the refusal.
fn take_place(
    global: &Arc<Semaphore>,
    per_address: &PerAddress,
    limits: &HttpLimits,
    stats: &Arc<ConnStats>,
    ip: IpAddr,
) -> Option<Place> {
    let Ok(permit) = global.clone().try_acquire_owned() else {
        stats.refused_global.fetch_add(1, Relaxed);
        return None;
    };
    let capped = limits.max_connections_per_address > 0
        && !limits.cap_exempt.iter().any(|net| net.contains(&ip));
    let address = if capped {
        let key = address_key(ip);
        let mut map = per_address.lock();
        let n = map.entry(key).or_insert(0);
        if *n >= limits.max_connections_per_address {
            drop(map);
            stats.refused_address.fetch_add(1, Relaxed);
            return None;
        }
        *n += 1;
        Some((per_address.clone(), key))
    } else {
        None
    };
    stats.open.fetch_add(1, Relaxed);
    Some(Place {
        _global: permit,
        address,
        stats: stats.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_is_grouped_by_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(address_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_reserve_keeps_room_for_the_process() {
        assert_eq!(fd_reserve(1024), 128);
        assert_eq!(fd_reserve(1 << 20), 1 << 17);
    }
}
