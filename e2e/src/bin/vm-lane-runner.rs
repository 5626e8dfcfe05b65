//! The VM lane's job runner, started inside the VM by the initramfs's init after it has
//! chrooted into the host's root: `vm-lane-runner SPOOL_DIR`. All the logic is in
//! `switchyard_e2e::vm::runner`.

use std::process::ExitCode;

use switchyard_e2e::vm::{plan::Spool, runner};

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: vm-lane-runner SPOOL_DIR");
        return ExitCode::from(2);
    };
    match runner::run(&Spool::new(dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("vm-lane-runner: FATAL: {e}");
            ExitCode::FAILURE
        }
    }
}
