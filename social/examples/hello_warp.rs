//! A bare warp "hello world": the baseline the REST benchmarks in docs/benchmarks.md are compared
//! with. `cargo run --release -p social --example hello_warp -- 127.0.0.1:18090`
//!
//! `GET /hello` answers `{"code":"SC"}`. `GET /bytes/N` answers a static JSON body of N bytes
//! (at most 1 MiB), built once at start-up: the cost of a response of a given size with no work
//! behind it, the ceiling for an endpoint whose answer is that big.

use warp::Filter;

/// Largest `/bytes/N` body.
const MAX_BYTES: usize = 1 << 20;

#[tokio::main]
async fn main() {
    let addr: std::net::SocketAddr = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 18090)));
    let hello = warp::path!("hello").map(|| "{\"code\":\"SC\"}");
    // `{"code":"SC","pad":"xxxx…"}`, cut or padded to exactly N bytes by the handler.
    let mut body = String::from("{\"code\":\"SC\",\"pad\":\"");
    body.push_str(&"x".repeat(MAX_BYTES));
    let body = bytes::Bytes::from(body);
    let sized = warp::path!("bytes" / usize).map(move |n: usize| {
        let n = n.clamp(22, MAX_BYTES);
        let mut b = body.slice(..n - 2).to_vec();
        b.extend_from_slice(b"\"}");
        warp::reply::with_header(b, "content-type", "application/json")
    });
    warp::serve(hello.or(sized)).run(addr).await;
}
