//! Assembling a gateway node: configuration, the bus link, the HTTP routes (`/stomp`, `/ws`) and the
//! TCP listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use broker_bridge::{Bus, NodeId, NodeInterest};
use stomp::Limits;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warp::Filter;

use crate::auth::Verifier;
use crate::destination::TopicPolicy;
use crate::hub::{Hub, Interest};
use crate::session::SessionConfig;
use crate::sockjs::{self, SockJsConfig};
use crate::{Gateway, Metrics, connection, transport};

/// Gateway settings (the binary maps its flags and `INSTAR_*` variables onto these).
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// STOMP frame limits (head, header count, body), checked before buffering.
    pub limits: Limits,
    /// Largest WebSocket message accepted (a frame may not exceed the STOMP limits either).
    pub max_ws_message: usize,
    /// Time a new connection has to send CONNECT.
    pub connect_timeout: Duration,
    /// Frames queued per session before it is closed as a slow consumer.
    pub outbound_queue: usize,
    /// Factor over the agreed client heart-beat interval before a silent client is dropped.
    pub heartbeat_grace: f64,
    /// Session settings (heart-beat offer, anonymous access, per-session caps).
    pub session: SessionConfig,
    /// Exact origins allowed to open SockJS sessions with credentials; empty echoes any origin.
    pub allowed_origins: Vec<String>,
    /// Buffer read per TCP read call.
    pub tcp_read_chunk: usize,
    /// WebSocket read and write buffer per connection (most of an idle connection's memory).
    pub ws_buffer: usize,
    /// Most stored messages one SUBSCRIBE replays ([`crate::replay`]); a longer gap is refused.
    pub max_replay: usize,
    /// How long the last message id a session was delivered on each topic is kept after the
    /// session ends, for the user's next session to resume from (see [`crate::replay`], "Resume
    /// without the header"). Zero: no server-side resume.
    pub resume_window: Duration,
    /// A topic SUBSCRIBE without [`crate::replay::LAST_ID_HEADER`] resumes from the user's
    /// previous session only when it comes this soon after CONNECTED (an automatic re-subscribe).
    pub resume_after_connect: Duration,
    /// SENDs per second one session may keep up, with bursts of [`SEND_BURST_SECONDS`] of them;
    /// past it the session gets an ERROR and is closed. 0: unlimited.
    pub send_rate: u32,
    /// Bearer token that opens `/metrics` ([`operator_only`]); `None`: only this machine may read it.
    pub metrics_token: Option<String>,
    /// STOMP sessions one user may hold on this node at once; one more gets an ERROR at CONNECT.
    /// 0: unlimited.
    pub max_sessions_per_user: u32,
    /// SockJS sessions open at once from one client address; 0: unlimited.
    pub sockjs_sessions_per_address: usize,
    /// Proxies whose `X-Forwarded-For` names a SockJS session's client.
    pub proxies: Vec<ipnet::IpNet>,
    /// Bounds of the node's buffer of commands the bus cannot take during a broker outage
    /// ([`crate::sendbuf`]).
    pub send_buffer: crate::sendbuf::SendBufferConfig,
    /// Top-level JSON field of an `/app/**` SEND body that orders it with other commands
    /// ([`crate::order`]): commands with one value are handled by one process at a time. Empty:
    /// commands are placed by session only.
    pub command_order_field: String,
    /// The node's connection limits: `max_connections`, `max_connections_per_address` and
    /// `cap_exempt`, one budget shared by its HTTP listener ([`serve_node_http`], which also takes
    /// the timeouts from here) and its raw STOMP/TCP listener ([`serve_tcp`], to which the
    /// timeouts do not apply).
    pub tcp_limits: crate::listen::HttpLimits,
}

/// Passes requests for operator endpoints (`/metrics`) only from an operator: with a token
/// configured, a request carrying `Authorization: Bearer <token>`; without one, a request from
/// this machine that did not come through a proxy (no `X-Forwarded-For`: the shipped nginx recipe
/// always sets it). Anything else is rejected as not found, so the public listener does not show
/// the endpoint exists.
pub fn operator_only(
    token: Option<String>,
) -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    let token: Option<Arc<str>> = token.filter(|t| !t.is_empty()).map(Arc::from);
    crate::listen::peer()
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("x-forwarded-for"))
        .and_then(
            move |peer: Option<SocketAddr>, auth: Option<String>, xff: Option<String>| {
                let allowed = match &token {
                    Some(t) => auth
                        .as_deref()
                        .and_then(|a| a.strip_prefix("Bearer "))
                        .is_some_and(|given| same_secret(given.trim(), t)),
                    None => xff.is_none() && peer.is_some_and(|p| p.ip().is_loopback()),
                };
                async move {
                    if allowed {
                        Ok(())
                    } else {
                        Err(warp::reject::not_found())
                    }
                }
            },
        )
        .untuple_one()
}

/// Compares two secrets in time independent of where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Seconds of [`GatewayConfig::send_rate`] a session may send at once.
pub const SEND_BURST_SECONDS: u32 = 5;

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            max_ws_message: 128 * 1024,
            connect_timeout: Duration::from_secs(10),
            outbound_queue: connection::DEFAULT_OUTBOUND_QUEUE,
            heartbeat_grace: 1.5,
            session: SessionConfig::default(),
            allowed_origins: Vec::new(),
            tcp_read_chunk: 4096,
            ws_buffer: 1024,
            max_replay: 5_000,
            resume_window: Duration::from_secs(120),
            resume_after_connect: Duration::from_millis(1000),
            send_rate: 200,
            metrics_token: None,
            max_sessions_per_user: 32,
            sockjs_sessions_per_address: crate::sockjs::SockJsConfig::default()
                .max_sessions_per_address,
            proxies: Vec::new(),
            send_buffer: crate::sendbuf::SendBufferConfig::default(),
            command_order_field: crate::order::DEFAULT_FIELD.to_owned(),
            tcp_limits: crate::listen::HttpLimits::default(),
        }
    }
}

/// Binds topics through the node's bus link.
struct LinkInterest(NodeInterest);

#[async_trait]
impl Interest for LinkInterest {
    async fn bind(&self, topic: &str) -> Result<(), String> {
        self.0.bind(topic).await.map_err(|e| e.to_string())
    }
    async fn unbind(&self, topic: &str) -> Result<(), String> {
        self.0.unbind(topic).await.map_err(|e| e.to_string())
    }
}

impl Gateway {
    /// Attaches a node to the bus and starts its delivery pump; its `/metrics` comes from a
    /// registry of its own.
    pub async fn start(
        node: NodeId,
        config: GatewayConfig,
        jwt_secret: &[u8],
        bus: Bus,
        policy: Arc<dyn TopicPolicy>,
    ) -> Result<Arc<Gateway>, broker_bridge::BusError> {
        let registry = broker_bridge::MetricsRegistry::new();
        Self::start_with_metrics(node, config, jwt_secret, bus, policy, registry).await
    }

    /// [`Gateway::start`] counting into `metrics` (which other parts of the process may share).
    pub async fn start_with_metrics(
        node: NodeId,
        config: GatewayConfig,
        jwt_secret: &[u8],
        bus: Bus,
        policy: Arc<dyn TopicPolicy>,
        metrics: broker_bridge::MetricsRegistry,
    ) -> Result<Arc<Gateway>, broker_bridge::BusError> {
        let link = bus.open_node(node.clone()).await?;
        // Token revocations reach every node, whoever is connected to it.
        link.bind(crate::revocation::TOKENS_TOPIC).await?;
        let (link, mut inbox) = link.split();
        let revocations = Arc::new(crate::revocation::Revocations::default());
        let private = policy.clone();
        let hub = Arc::new(
            Hub::new(Arc::new(LinkInterest(link)))
                .with_private_topics(Arc::new(move |topic: &str| private.owns(topic))),
        );
        let registry = bus.registry().clone();
        let send_buffer = Arc::new(crate::sendbuf::SendBuffer::new(config.send_buffer));
        let http_stats: Arc<crate::listen::ConnStats> = Arc::default();
        let conn_caps = crate::listen::Caps::new(config.tcp_limits.clone(), http_stats.clone());
        let gw = Arc::new(Gateway {
            send_buffer,
            node,
            session_config: Arc::new(config.session.clone()),
            config,
            verifier: Arc::new(Verifier::new(jwt_secret.to_vec())),
            bus,
            registry,
            hub: hub.clone(),
            policy,
            metrics: Metrics::default(),
            counted: crate::metrics::Counted::register(&metrics),
            metrics_registry: metrics,
            http_stats,
            tcp_stats: Arc::default(),
            conn_caps,
            sockjs_metrics: sockjs::SockJsMetrics::default(),
            shutdown: CancellationToken::new(),
            user_sessions: parking_lot::Mutex::default(),
            revocations: revocations.clone(),
        });
        tokio::spawn(async move {
            while let Some(delivery) = inbox.recv().await {
                if let broker_bridge::Target::Topic(topic) = &delivery.target
                    && topic == crate::revocation::TOKENS_TOPIC
                {
                    revocations.apply(&delivery.envelope);
                    continue;
                }
                hub.dispatch(&delivery);
            }
            tracing::info!("bus inbox closed");
        });
        Ok(gw)
    }

    /// The HTTP routes: `/stomp` (STOMP over WebSocket), `/ws` (SockJS, plus raw `/ws/websocket`),
    /// `/metrics`, and `/health` (the bus's health: 200 `up` or `degraded: ...`, 503 `down: ...`).
    pub fn routes(self: &Arc<Self>) -> warp::filters::BoxedFilter<(Box<dyn warp::Reply>,)> {
        let gw = self.clone();
        let max = self.config.max_ws_message;
        let protocols: Arc<[String]> = ["v12.stomp", "v11.stomp", "v10.stomp"]
            .map(String::from)
            .into();
        let stomp_ws = warp::path("stomp")
            .and(warp::path::end())
            .and(warp::method())
            .and(warp::header::headers_cloned())
            .and(warp::ext::optional::<hyper::upgrade::OnUpgrade>())
            .map(move |method, headers, on_upgrade| {
                let gw = gw.clone();
                // Highest version first: the first offered one we accept, in our order.
                let offered = choose_subprotocol(&headers_list(&headers))
                    .map(|p| vec![p.to_owned()])
                    .unwrap_or_else(|| protocols.to_vec());
                match sockjs::ws::handshake(&method, &headers, on_upgrade, &offered) {
                    Ok((on_upgrade, response)) => {
                        let config = sockjs::ws::socket_config(gw.config.ws_buffer, max);
                        tokio::spawn(async move {
                            let Ok(upgraded) = on_upgrade.await else {
                                return;
                            };
                            let socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
                                hyper_util::rt::TokioIo::new(upgraded),
                                tokio_tungstenite::tungstenite::protocol::Role::Server,
                                Some(config),
                            )
                            .await;
                            let (source, sink) = transport::websocket(socket);
                            connection::run(gw, source, sink, "websocket").await;
                        });
                        Box::new(response) as Box<dyn warp::Reply>
                    }
                    Err(response) => Box::new(response) as Box<dyn warp::Reply>,
                }
            });
        let gw = self.clone();
        let sockjs_config = SockJsConfig {
            allowed_origins: self.config.allowed_origins.clone(),
            max_message_bytes: max,
            max_sessions_per_address: self.config.sockjs_sessions_per_address,
            proxies: self.config.proxies.clone(),
            ..SockJsConfig::default()
        };
        let sockjs_metrics = self.sockjs_metrics.clone();
        let (sockjs_routes, _) =
            sockjs::routes_counted("ws", sockjs_config, sockjs_metrics, move |conn| {
                let gw = gw.clone();
                tokio::spawn(async move {
                    let kind = conn.transport();
                    let (source, sink) = transport::sockjs(conn);
                    connection::run(gw, source, sink, kind).await;
                });
            });
        let gw = self.clone();
        let metrics = warp::path("metrics")
            .and(warp::path::end())
            .and(warp::get())
            .and(operator_only(self.config.metrics_token.clone()))
            .map(move || {
                Box::new(warp::reply::with_header(
                    gw.metrics_text(),
                    "content-type",
                    "text/plain; version=0.0.4",
                )) as Box<dyn warp::Reply>
            });
        let gw = self.clone();
        let health = warp::path("health")
            .and(warp::path::end())
            .and(warp::get())
            .map(move || {
                let (status, text) = match gw.bus.health() {
                    broker_bridge::Health::Up => (warp::http::StatusCode::OK, "up".to_owned()),
                    broker_bridge::Health::Degraded(why) => {
                        (warp::http::StatusCode::OK, format!("degraded: {why}"))
                    }
                    broker_bridge::Health::Down(why) => (
                        warp::http::StatusCode::SERVICE_UNAVAILABLE,
                        format!("down: {why}"),
                    ),
                };
                Box::new(warp::reply::with_status(text, status)) as Box<dyn warp::Reply>
            });
        let gw = self.clone();
        let live = warp::path!("health" / "live").and(warp::get()).map(|| {
            Box::new(warp::reply::with_status(
                "live\n",
                warp::http::StatusCode::OK,
            )) as Box<dyn warp::Reply>
        });
        let ready = warp::path!("health" / "ready")
            .and(warp::get())
            .map(move || {
                let (status, text) = if gw.shutdown.is_cancelled() {
                    (
                        warp::http::StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: draining\n".to_owned(),
                    )
                } else {
                    match gw.bus.health() {
                        broker_bridge::Health::Down(why) => (
                            warp::http::StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: bus: {why}\n"),
                        ),
                        _ => (warp::http::StatusCode::OK, "ready\n".to_owned()),
                    }
                };
                Box::new(warp::reply::with_status(text, status)) as Box<dyn warp::Reply>
            });
        stomp_ws
            .map(|r: Box<dyn warp::Reply>| r)
            .or(metrics)
            .unify()
            .or(live)
            .unify()
            .or(ready)
            .unify()
            .or(health)
            .unify()
            .or(sockjs_routes)
            .unify()
            .boxed()
    }
}

fn headers_list(headers: &warp::http::HeaderMap) -> String {
    headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",")
}

/// Picks the highest STOMP version among the offered WebSocket subprotocols.
pub fn choose_subprotocol(offered: &str) -> Option<&'static str> {
    let offered: Vec<&str> = offered.split(',').map(str::trim).collect();
    ["v12.stomp", "v11.stomp", "v10.stomp"]
        .into_iter()
        .find(|p| offered.iter().any(|o| o.eq_ignore_ascii_case(p)))
}

/// Accepts raw STOMP over TCP until the gateway shuts down.
pub async fn serve_tcp(gw: Arc<Gateway>, listener: TcpListener) {
    // The node's budget, shared with its HTTP listener: at most `max_connections` at once and
    // `max_connections_per_address` from one address (the proxies exempt) over both, the TCP
    // side counted in `instar_tcp_connections_*`.
    let caps = gw.conn_caps.share(gw.tcp_stats.clone());
    loop {
        tokio::select! {
            () = gw.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(place) = caps.take(peer.ip()) else {
                        // Refused at once: STOMP has no frame to send before CONNECT, so a
                        // best-effort ERROR, never waiting, then the socket is closed.
                        let _ = stream.try_write(TCP_REFUSED);
                        drop(stream);
                        continue;
                    };
                    let gw = gw.clone();
                    let chunk = gw.config.tcp_read_chunk;
                    tokio::spawn(async move {
                        let (source, sink) = transport::tcp(stream, chunk);
                        connection::run(gw, source, sink, "tcp").await;
                        drop(place);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// What a STOMP/TCP connection refused by a cap is told before it is closed.
const TCP_REFUSED: &[u8] =
    b"ERROR\nmessage:too many connections\ncontent-type:text/plain\n\ntoo many connections\0";

/// Pending connections the HTTP listener queues before they are accepted.
const HTTP_BACKLOG: u32 = 1024;

/// A TCP listener on `addr` whose connections have Nagle's algorithm off (`TCP_NODELAY`), set on
/// the listening socket so that every accepted socket inherits it (the HTTP server accepts them
/// itself). With Nagle on, a small write (a STOMP frame, a SockJS packet) waits for the client's
/// acknowledgement of the previous one whenever the client delays its ACKs, which Linux does as
/// soon as the client sends something (a heart-beat, a SEND): a stall of 40 ms per such write.
pub fn bind_nodelay(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(HTTP_BACKLOG)
}

/// Binds an HTTP server for `routes` on `addr` ([`bind_nodelay`]) under `limits`, stopping when
/// `shutdown` is cancelled.
pub async fn serve_http(
    routes: warp::filters::BoxedFilter<(Box<dyn warp::Reply>,)>,
    addr: SocketAddr,
    limits: crate::listen::HttpLimits,
    stats: Arc<crate::listen::ConnStats>,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
    serve_http_on(routes, bind_nodelay(addr)?, limits, stats, shutdown)
}

/// [`serve_http`] on a listener bound already (e.g. to learn its port before the routes exist).
/// Serves a gateway node's routes on `listener` with the node's connection budget
/// ([`Gateway::conn_caps`], shared with its STOMP/TCP listener) and limits, until the node shuts
/// down.
pub fn serve_node_http(
    gw: &Gateway,
    routes: warp::filters::BoxedFilter<(Box<dyn warp::Reply>,)>,
    listener: TcpListener,
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = ()> + use<>)> {
    let local = listener.local_addr()?;
    Ok((
        local,
        crate::listen::serve_with(routes, listener, gw.conn_caps.clone(), gw.shutdown.clone()),
    ))
}

pub fn serve_http_on(
    routes: warp::filters::BoxedFilter<(Box<dyn warp::Reply>,)>,
    listener: TcpListener,
    limits: crate::listen::HttpLimits,
    stats: Arc<crate::listen::ConnStats>,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
    let local = listener.local_addr()?;
    Ok((
        local,
        crate::listen::serve(routes, listener, limits, stats, shutdown),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepted sockets of [`bind_nodelay`] have Nagle off; those of a plain listener have it on
    /// (what the HTTP server got before, and why frames stalled 40 ms behind delayed ACKs).
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay() {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        for (listener, want) in [
            (bind_nodelay(addr).unwrap(), true),
            (TcpListener::bind(addr).await.unwrap(), false),
        ] {
            let local = listener.local_addr().unwrap();
            let client = tokio::net::TcpStream::connect(local).await.unwrap();
            let (accepted, _) = listener.accept().await.unwrap();
            assert_eq!(accepted.nodelay().unwrap(), want);
            drop(client);
        }
    }
}
