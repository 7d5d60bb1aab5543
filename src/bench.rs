//! Load-test handlers, registered only when `INSTAR_BENCH_ECHO=1`: they turn a client SEND into the
//! server-side publishes the load generator measures (clients may not publish to topics or to other
//! users themselves).
//!
//! - `/app/bench.fanout`: the body and headers are republished to topic `public.bench`;
//! - `/app/bench.direct`: republished to the user named in the `to` header, on `/user/queue/bench`.

use std::sync::Arc;

use broker_bridge::{AppCommand, AppHandler, Bus, Envelope, HandlerError, Target, async_trait};

pub(crate) struct BenchEcho {
    bus: Bus,
}

impl BenchEcho {
    pub(crate) fn register(bus: &Bus) {
        let handler = Arc::new(BenchEcho { bus: bus.clone() });
        bus.register_handler("/app/bench.", handler);
    }
}

#[async_trait]
impl AppHandler for BenchEcho {
    async fn handle(&self, cmd: AppCommand) -> Result<(), HandlerError> {
        let content_type = cmd
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.clone());
        let headers: Vec<(String, String)> = cmd
            .headers
            .iter()
            .filter(|(k, _)| k.starts_with("x-"))
            .cloned()
            .collect();
        let (target, destination) = match cmd.destination.as_str() {
            "/app/bench.fanout" => (
                Target::Topic("public.bench".into()),
                "/topic/public.bench".to_owned(),
            ),
            "/app/bench.direct" => {
                let to = cmd
                    .headers
                    .iter()
                    .find(|(k, _)| k == "to")
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| {
                        HandlerError::Rejected("bench.direct needs a 'to' header".into())
                    })?;
                (
                    Target::User {
                        user: to,
                        queue: "bench".into(),
                    },
                    "/user/queue/bench".to_owned(),
                )
            }
            other => {
                return Err(HandlerError::Rejected(format!(
                    "unknown bench destination {other}"
                )));
            }
        };
        let envelope = Envelope {
            destination,
            content_type,
            headers,
            body: cmd.body,
        };
        self.bus
            .publish(target, envelope)
            .await
            .map_err(|e| HandlerError::Transient(e.to_string()))
    }
}
