//! Black-box load harness for STOMP over WebSocket (scenarios arrive with the scale-out work).

fn main() {
    eprintln!("loadtest: no scenario is implemented yet; see docs/loadtest.md");
    std::process::exit(2);
}
