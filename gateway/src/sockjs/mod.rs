//! A SockJS 0.3.3 server for warp, agnostic of what runs on top (STOMP here).
//!
//! [`routes`] returns one warp filter serving everything under `/<prefix>`:
//!
//! | Request | Answer |
//! |---|---|
//! | `GET /ws`, `/ws/` | `Welcome to SockJS!\n` |
//! | `GET`/`OPTIONS /ws/info` | `{"entropy":…,"origins":["*:*"],"cookie_needed":…,"websocket":true}` |
//! | `GET /ws/<server>/<session>/websocket` | SockJS-framed WebSocket (`o`, `a[…]`, `h`, `c[…]`) |
//! | `POST …/xhr_streaming` | streaming receiver: 2 KiB prelude, one frame per line |
//! | `GET …/eventsource` | streaming receiver framed as server-sent events |
//! | `POST …/xhr` | polling receiver: one frame per response |
//! | `POST …/xhr_send` | inbound messages for the HTTP transports |
//! | `GET /ws/websocket` | raw WebSocket, no SockJS framing |
//!
//! Paths it does not know are *rejected* (warp `not_found`), so the filter
//! composes with others through `.or()`; everything it does know gets a
//! reply (403 for a refused `Origin`, 404 for an unknown session, 405, 413,
//! 500 for bad payloads, 503 over `max_sessions`). The iframe, htmlfile and
//! JSONP transports are not served: the sockjs-client skips to the next
//! transport.
//!
//! # Design
//!
//! * **One handle per session.** Every session, whatever its transport,
//!   becomes one [`SockJsConn`] handed once to the application callback. It
//!   is backed by two bounded tokio mpsc channels: *inbound* (client to
//!   application, `inbound_capacity` messages) and *outbound* (application
//!   to client, `outbound_capacity` messages; [`SockJsConn::send`] waits
//!   when it is full, which is the back-pressure towards the application).
//!   A [`CancellationToken`](tokio_util::sync::CancellationToken) marks the
//!   end of the session; `send()` then fails and `recv()` returns `None`
//!   once it has handed over what the client sent before leaving.
//!   `close()` queues a close marker behind the pending messages, so a
//!   STOMP `RECEIPT`/`ERROR` sent just before it still reaches the client.
//! * **WebSocket** sessions live exactly as long as their socket: a reader
//!   decodes inbound frames into the inbound channel, a writer batches
//!   queued messages into `a[…]` frames (up to ~32 KiB a frame) and sends
//!   `h` after `heartbeat_interval` of outbound silence; both run in the one
//!   task that owns the socket. Slow or dead peers are cut after
//!   `write_timeout`. They are not in the session table. The upgrade is
//!   done here (hyper `OnUpgrade` + tokio-tungstenite) instead of with
//!   `warp::ws()`, because warp cannot size tungstenite's buffers and the
//!   default 128 KiB read buffer is allocated per connection; here both are
//!   `websocket_buffer_bytes` (8 KiB). The client's WebSocket Close is
//!   answered with a Close echoing its code before the socket is dropped; a
//!   Close of ours waits (1 s at most) for the client's answer; a connection
//!   failed for what the client sent ends with a Close 1009 (too big), 1007
//!   (not UTF-8, broken JSON) or 1002 (framing error), without a SockJS
//!   `c[...]` frame.
//! * **HTTP transports** keep their sessions in a table
//!   (`Mutex<HashMap<url session id, Arc<HttpSession>>>`). The outbound
//!   receiver sits behind an async mutex that the one active *receiving*
//!   request (`xhr`, `xhr_streaming`, `eventsource`) holds; a second
//!   concurrent receiver waits up to 250 ms for it, then gets
//!   `c[2010,"Another connection still open"]`. The wait lets a poll sent
//!   right after the client aborted the previous one take over: the aborted
//!   request only lets go once the HTTP server has seen its connection
//!   close, which may come after the new request. Messages wait in the
//!   outbound channel between polls. `xhr_send` decodes the body and feeds
//!   the inbound channel.
//! * **Reaper.** Each HTTP session has a small watchdog task that removes it
//!   from the table `disconnect_delay` after the last receiving request
//!   ended (and none started since), then ends the session. After an
//!   application close the session stays in the table until then, serving
//!   the same close frame to every receiving request, as the protocol asks.
//!   A receiving request that the client abandons closes the session
//!   (`c[1002,"Connection interrupted"]`, what the next receiving request
//!   gets).
//! * **Ids.** The client's URL session id only keys the table;
//!   [`SockJsConn::id`] is a fresh random 128-bit id.
//! * **Limits.** Inbound WebSocket messages and frames are capped at
//!   `max_message_bytes` by the WebSocket codec; `xhr_send` bodies are
//!   refused with 413 from `Content-Length` before anything is read, and a
//!   chunked body (as Node's sockjs-client sends) is cut off at the limit
//!   while it is read. A streaming response ends after
//!   `max_streaming_bytes` of frames; the client reopens it.
//! * **Metrics.** [`routes_with_metrics`] also returns [`SockJsMetrics`]:
//!   sessions open (total and per transport), opened, refused.
//! * **CORS.** With an `Origin` header, the origin must be in
//!   `allowed_origins` (or that list is empty): it is echoed in
//!   `Access-Control-Allow-Origin` with `Access-Control-Allow-Credentials:
//!   true`; otherwise 403. Requests without `Origin` (non-browser clients)
//!   are served without CORS headers.

mod conn;
mod frame;
mod metrics;
mod service;
pub(crate) mod ws;
mod xhr;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use warp::Filter;
use warp::filters::BoxedFilter;

pub use conn::{Closed, SockJsConn, SockJsSender};
pub use metrics::{MetricsSnapshot, SockJsMetrics, TRANSPORTS};

/// Settings of one SockJS endpoint.
#[derive(Debug, Clone)]
pub struct SockJsConfig {
    /// Exact origins (`scheme://host[:port]`) allowed for CORS with
    /// credentials; empty = echo any request `Origin` (development).
    pub allowed_origins: Vec<String>,
    /// SockJS `h` frame after this much outbound idleness; also how long a
    /// polling request waits for data. Default 25 s.
    pub heartbeat_interval: Duration,
    /// HTTP transports: a session ends this long after its last receiving
    /// request ended. Default 5 s.
    pub disconnect_delay: Duration,
    /// Largest inbound WebSocket message or `xhr_send` body. Default 128 KiB.
    pub max_message_bytes: usize,
    /// A streaming response is ended after this many bytes. Default 128 KiB.
    pub max_streaming_bytes: usize,
    /// Outbound messages queued per session before `send()` waits.
    /// Default 256.
    pub outbound_capacity: usize,
    /// Inbound messages queued per session before the transport stops
    /// reading (WebSocket) or `xhr_send` waits. Default 64.
    pub inbound_capacity: usize,
    /// New sessions beyond this many open ones are refused with 503.
    /// Default 10 000.
    pub max_sessions: usize,
    /// New sessions beyond this many open ones from one client address
    /// (IPv6: one /64) are refused with 503; 0: unlimited. Default 100.
    pub max_sessions_per_address: usize,
    /// Proxies whose `X-Forwarded-For` names the client for
    /// `max_sessions_per_address` (its last value: the address the proxy
    /// saw; the shipped nginx recipe sets exactly that one). Default none.
    pub proxies: Vec<ipnet::IpNet>,
    /// Advertise `cookie_needed` in `/info` and set `JSESSIONID` on the
    /// HTTP transports (for sticky load balancing). Default false.
    pub cookie_needed: bool,
    /// A WebSocket write or streaming chunk that the peer does not take
    /// within this time ends the session. Default 30 s.
    pub write_timeout: Duration,
    /// Target size of a WebSocket connection's read and write buffers
    /// (tungstenite's default, 128 KiB each, is allocated per connection).
    /// Default 8 KiB.
    pub websocket_buffer_bytes: usize,
    /// WebSocket subprotocols that may be selected: the first one the client
    /// offers in `Sec-WebSocket-Protocol` that is in this list is echoed.
    /// Default empty (none selected).
    pub websocket_protocols: Vec<String>,
}

impl Default for SockJsConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            heartbeat_interval: Duration::from_secs(25),
            disconnect_delay: Duration::from_secs(5),
            max_message_bytes: 128 * 1024,
            max_streaming_bytes: 128 * 1024,
            outbound_capacity: 256,
            inbound_capacity: 64,
            max_sessions: 10_000,
            max_sessions_per_address: 100,
            proxies: Vec::new(),
            cookie_needed: false,
            write_timeout: Duration::from_secs(30),
            websocket_buffer_bytes: 8 * 1024,
            websocket_protocols: Vec::new(),
        }
    }
}

type OnSession = dyn Fn(SockJsConn) + Send + Sync;

/// State shared by all requests of one endpoint.
pub(crate) struct Server {
    config: SockJsConfig,
    on_session: Box<OnSession>,
    sessions: Mutex<HashMap<String, Arc<xhr::HttpSession>>>,
    metrics: SockJsMetrics,
    per_address: metrics::PerAddress,
}

impl Server {
    /// Takes a place for a new session of `transport` from the client of `peer`/`headers`
    /// under `max_sessions_per_address` and `max_sessions`, or counts the refusal.
    pub(crate) fn open_session(
        &self,
        transport: &'static str,
        peer: Option<SocketAddr>,
        headers: &warp::http::HeaderMap,
    ) -> Option<metrics::SessionPermit> {
        let max = self.config.max_sessions_per_address;
        let address = match (max, client_address(&self.config.proxies, peer, headers)) {
            (1.., Some(ip)) => {
                let key = crate::listen::address_key(ip);
                let mut map = self.per_address.lock();
                let n = map.entry(key).or_insert(0);
                if *n >= max {
                    drop(map);
                    self.metrics.refused_for_address();
                    return None;
                }
                *n += 1;
                Some(metrics::AddressSlot {
                    map: self.per_address.clone(),
                    key,
                })
            }
            _ => None,
        };
        // Dropping `address` on refusal gives its place back.
        let mut permit = self.metrics.try_open(transport, self.config.max_sessions)?;
        permit.address = address;
        Some(permit)
    }

    fn new_conn(
        &self,
        transport: &'static str,
        peer: Option<SocketAddr>,
    ) -> (SockJsConn, conn::TransportSide) {
        conn::new_session(
            transport,
            peer,
            self.config.inbound_capacity,
            self.config.outbound_capacity,
            self.config.disconnect_delay.max(Duration::from_secs(1)),
        )
    }
}

/// The client's address: the last `X-Forwarded-For` value when `peer` is one of `proxies`,
/// else `peer`.
fn client_address(
    proxies: &[ipnet::IpNet],
    peer: Option<SocketAddr>,
    headers: &warp::http::HeaderMap,
) -> Option<std::net::IpAddr> {
    let peer = peer?.ip();
    if !proxies.iter().any(|p| p.contains(&peer)) {
        return Some(peer);
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| v.trim().parse().ok());
    Some(forwarded.unwrap_or(peer))
}

/// The SockJS endpoint under `/<prefix>` (e.g. `"ws"`). `on_session` is
/// called once per new session; it should spawn the application task.
pub fn routes<F>(
    prefix: &'static str,
    config: SockJsConfig,
    on_session: F,
) -> BoxedFilter<(Box<dyn warp::Reply>,)>
where
    F: Fn(SockJsConn) + Send + Sync + 'static,
{
    routes_with_metrics(prefix, config, on_session).0
}

/// Like [`routes`], also returning the endpoint's live counters.
pub fn routes_with_metrics<F>(
    prefix: &'static str,
    config: SockJsConfig,
    on_session: F,
) -> (BoxedFilter<(Box<dyn warp::Reply>,)>, SockJsMetrics)
where
    F: Fn(SockJsConn) + Send + Sync + 'static,
{
    routes_counted(prefix, config, SockJsMetrics::default(), on_session)
}

/// Like [`routes_with_metrics`], counting into `metrics` (e.g. kept by the caller for its
/// `/metrics`).
pub fn routes_counted<F>(
    prefix: &'static str,
    config: SockJsConfig,
    metrics: SockJsMetrics,
    on_session: F,
) -> (BoxedFilter<(Box<dyn warp::Reply>,)>, SockJsMetrics)
where
    F: Fn(SockJsConn) + Send + Sync + 'static,
{
    let server = Arc::new(Server {
        config,
        on_session: Box::new(on_session),
        sessions: Mutex::new(HashMap::new()),
        metrics: metrics.clone(),
        per_address: metrics::PerAddress::default(),
    });
    // hyper's upgrade handle, present on requests that asked for one.
    let upgrade = warp::ext::optional::<hyper::upgrade::OnUpgrade>();
    let filter = warp::path(prefix)
        .and(warp::path::tail())
        .and(warp::method())
        .and(warp::header::headers_cloned())
        .and(crate::listen::peer())
        .and(upgrade)
        .and(warp::body::stream())
        .and_then(
            move |tail: warp::path::Tail, method, headers, peer, upgrade, body| {
                let server = server.clone();
                let req = service::Request {
                    path: tail.as_str().to_owned(),
                    method,
                    headers,
                    peer,
                    upgrade,
                };
                async move { service::dispatch(server, req, body).await }
            },
        )
        .boxed();
    (filter, metrics)
}
