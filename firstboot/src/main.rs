//! The `firstboot` command line: parse arguments and dispatch into the library.

fn main() {
    println!("firstboot {}", env!("CARGO_PKG_VERSION"));
}
