//! A bare warp "hello world": the baseline the REST benchmarks in docs/benchmarks.md are compared
//! with. `cargo run --release -p social --example hello_warp -- 127.0.0.1:18090`

use warp::Filter;

#[tokio::main]
async fn main() {
    let addr: std::net::SocketAddr = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 18090)));
    let hello = warp::path!("hello").map(|| "{\"code\":\"SC\"}");
    warp::serve(hello).run(addr).await;
}
