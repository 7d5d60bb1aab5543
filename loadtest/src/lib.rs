//! `loadtest`: a black-box load harness for STOMP 1.2 over WebSocket, aimed at Instar's gateway and,
//! for comparison, RabbitMQ Web-STOMP. See `docs/loadtest.md` for usage and method.
//!
//! Layout:
//!
//! - [`target`]: the loopback-only URL check;
//! - [`jwt`]: HS256 tokens for Instar's CONNECT;
//! - [`client`]: one STOMP session over a WebSocket (the `stomp` crate's codec does the parsing);
//! - [`pacing`]: open-loop send schedules (latency from the *intended* send time);
//! - [`stamp`]: the stream / sequence / send-time stamp each message carries;
//! - [`accounting`]: per-stream lost / duplicated / reordered counting;
//! - [`faults`]: the fault mode's accounting (attempted … duplicated), fault schedule, recovery;
//! - [`latency`]: the time origin and sharded HDR histograms;
//! - [`procfs`]: server RSS and CPU from `/proc`, our own open-files limit;
//! - [`report`]: JSON, SVG and the stdout summary;
//! - [`scenario`]: `fanout`, `direct`, `chat`, `idle`.

pub mod accounting;
pub mod client;
pub mod faults;
pub mod jwt;
pub mod latency;
pub mod pacing;
pub mod procfs;
pub mod progress;
pub mod report;
pub mod scenario;
pub mod stamp;
pub mod target;
