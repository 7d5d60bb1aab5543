//! A gateway on a free loopback port, with an in-process bus, for the integration tests.
#![allow(dead_code, unreachable_pub)]
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use broker_bridge::{
    AppCommand, AppHandler, Bus, Envelope, HandlerError, InProcessConfig, Registry, Target,
};
use gateway::auth::{Algorithm, Verifier};
use gateway::destination::PrefixPolicy;
use gateway::{Gateway, GatewayConfig};
use tokio::sync::mpsc;

pub const SECRET: &[u8] = b"test-secret-0123456789";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A token for `user` valid for `secs` seconds.
pub fn token(user: &str, secs: i64) -> String {
    let now = now();
    let exp = if secs >= 0 {
        now + secs as u64
    } else {
        now - secs.unsigned_abs()
    };
    Verifier::new(SECRET.to_vec()).sign(
        Algorithm::Hs256,
        user,
        Some("ROLE_USER"),
        now.saturating_sub(1),
        exp,
    )
}

/// Records application commands and, for `/app/echo`, publishes the body back to the sender's
/// `/user/queue/echo`.
pub struct Recorder {
    pub tx: mpsc::UnboundedSender<AppCommand>,
    pub bus: Bus,
}

#[async_trait]
impl AppHandler for Recorder {
    async fn handle(&self, cmd: AppCommand) -> Result<(), HandlerError> {
        if cmd.destination == "/app/echo" {
            let env = Envelope {
                destination: "/user/queue/echo".into(),
                content_type: Some("application/json".into()),
                headers: Vec::new(),
                body: cmd.body.clone(),
            };
            let target = Target::User {
                user: cmd.principal.clone(),
                queue: "echo".into(),
            };
            self.bus
                .publish(target, env)
                .await
                .map_err(|e| HandlerError::Transient(e.to_string()))?;
        }
        let _ = self.tx.send(cmd);
        Ok(())
    }
}

pub struct TestGateway {
    pub gw: Arc<Gateway>,
    pub bus: Bus,
    pub http: SocketAddr,
    pub tcp: SocketAddr,
    pub commands: mpsc::UnboundedReceiver<AppCommand>,
}

impl TestGateway {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut GatewayConfig)) -> Self {
        Self::start_full(tweak, |_| Arc::new(PrefixPolicy::new(["public."]))).await
    }

    /// A gateway whose topic policy is built from its bus.
    #[allow(dead_code)]
    pub async fn start_full(
        tweak: impl FnOnce(&mut GatewayConfig),
        policy: impl FnOnce(&Bus) -> Arc<dyn gateway::destination::TopicPolicy>,
    ) -> Self {
        let mut config = GatewayConfig {
            connect_timeout: Duration::from_secs(3),
            ..GatewayConfig::default()
        };
        tweak(&mut config);
        let bus = Bus::in_process(Registry::in_process(), InProcessConfig::default());
        let (tx, commands) = mpsc::unbounded_channel();
        bus.register_handler(
            "/app/",
            Arc::new(Recorder {
                tx,
                bus: bus.clone(),
            }),
        );
        let policy = policy(&bus);
        let gw = Gateway::start("test-node".into(), config, SECRET, bus.clone(), policy)
            .await
            .expect("gateway starts");
        // As a node serves: one connection budget for HTTP and raw TCP.
        let listener =
            gateway::server::bind_nodelay("127.0.0.1:0".parse().unwrap()).expect("http binds");
        let (http, fut) =
            gateway::server::serve_node_http(&gw, gw.routes(), listener).expect("http binds");
        tokio::spawn(fut);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("tcp binds");
        let tcp = listener.local_addr().expect("addr");
        tokio::spawn(gateway::serve_tcp(gw.clone(), listener));
        Self {
            gw,
            bus,
            http,
            tcp,
            commands,
        }
    }

    /// Publishes a JSON body to every session of `user` subscribed to `/user/queue/<queue>`.
    pub async fn to_user(&self, user: &str, queue: &str, body: &str) {
        let env = Envelope {
            destination: format!("/user/queue/{queue}"),
            content_type: Some("application/json".into()),
            headers: Vec::new(),
            body: bytes::Bytes::copy_from_slice(body.as_bytes()),
        };
        self.bus
            .publish(
                Target::User {
                    user: user.into(),
                    queue: queue.into(),
                },
                env,
            )
            .await
            .expect("publish");
    }

    pub async fn to_topic(&self, topic: &str, body: &str) {
        let env = Envelope {
            destination: format!("/topic/{topic}"),
            content_type: Some("text/plain".into()),
            headers: Vec::new(),
            body: bytes::Bytes::copy_from_slice(body.as_bytes()),
        };
        self.bus
            .publish(Target::Topic(topic.into()), env)
            .await
            .expect("publish");
    }

    /// Waits until `user` has a registered session (CONNECT handled).
    pub async fn wait_online(&self, user: &str) {
        for _ in 0..200 {
            if self.bus.registry().is_online(user).await.unwrap_or(false) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{user} never came online");
    }
}
