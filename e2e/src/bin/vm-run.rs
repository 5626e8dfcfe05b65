//! `vm-run`: runs one command in the VM lane (Debian's kernel under qemu, the host's root
//! over 9p, IPVS modules loaded; see `switchyard_e2e::vm`) and relays its output and
//! exit status. What the benchmarks that need IPVS use (`scripts/bench-vm.sh`):
//!
//! ```sh
//! target/debug/vm-run [--timeout-secs N] [--memory-mib M] -- PROGRAM ARGS...
//! ```
//!
//! Needs root (qemu, the VM's networking) and the lane's packages (`make vm-deps`). The
//! program path must be absolute or relative to the current directory, which the job
//! keeps.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Context, Result};
use switchyard_e2e::vm::{Exit, Job, VmLane};

struct Args {
    timeout: Duration,
    memory_mib: u32,
    program: PathBuf,
    args: Vec<String>,
}

fn parse() -> Result<Args> {
    let mut timeout = Duration::from_secs(3600);
    let mut memory_mib = 4096;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--timeout-secs" => {
                let v = it.next().context("--timeout-secs needs a value")?;
                timeout = Duration::from_secs(v.parse().context("--timeout-secs")?);
            }
            "--memory-mib" => {
                let v = it.next().context("--memory-mib needs a value")?;
                memory_mib = v.parse().context("--memory-mib")?;
            }
            "--" => {
                let program = it.next().context("no program after --")?;
                let program = std::fs::canonicalize(&program)
                    .with_context(|| format!("program {program:?}"))?;
                return Ok(Args {
                    timeout,
                    memory_mib,
                    program,
                    args: it.collect(),
                });
            }
            other => bail!("unknown argument {other:?} (usage: vm-run [--timeout-secs N] [--memory-mib M] -- PROGRAM ARGS...)"),
        }
    }
    bail!("usage: vm-run [--timeout-secs N] [--memory-mib M] -- PROGRAM ARGS...")
}

fn main() -> Result<ExitCode> {
    let args = parse()?;
    let lane = VmLane::new()
        .context("the VM lane")?
        .memory_mib(args.memory_mib);
    let name = args
        .program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "job".into());
    let job = Job::new(name.clone(), &args.program)
        .args(args.args)
        .cwd(std::env::current_dir()?)
        .timeout(args.timeout);
    let report = lane.run(&[job]).context("running the VM")?;
    let Some(outcome) = report.job(&name) else {
        bail!(
            "the VM ended without running {name} ({:?}); console tail:\n{}",
            report.status,
            report.console_tail
        );
    };
    print!("{}", outcome.stdout);
    eprint!("{}", outcome.stderr);
    eprintln!(
        "vm-run: {name} ended {:?} after {:.1} s in the VM",
        outcome.exit,
        outcome.duration.as_secs_f64()
    );
    Ok(match outcome.exit {
        Some(Exit::Code(0)) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}
