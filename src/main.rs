//! `instar`: the composition root.
fn main() {
    println!("instar");
}
