//! The `imagebuild` command line: parse arguments and dispatch into the library.

fn main() {
    println!("imagebuild {}", env!("CARGO_PKG_VERSION"));
}
