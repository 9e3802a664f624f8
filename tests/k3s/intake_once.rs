//! intake-once: runs config intake once (`intake-once BOOT_DIR ROOT`); the kill -9 test's victim.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(boot), Some(root)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: intake-once BOOT_DIR ROOT");
        return ExitCode::FAILURE;
    };
    match firstboot::intake::intake(boot.as_ref(), root.as_ref(), false) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
