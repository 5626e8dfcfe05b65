//! The job runner that executes inside the VM (the `vm-lane-runner` binary, started by the
//! initramfs's init once it has chrooted into the host's root): reads the [`Plan`] from
//! the results share, loads the kernel modules, mounts bpffs and cgroup2, then runs each
//! job with its own environment, output files and time bound, writing a record per job.
//!
//! Each job runs in its own process group; at its bound, or when it exits, the whole group
//! is killed, so a test that leaves a helper behind cannot disturb the next job. Progress
//! lines go to the runner's stdout, which is the VM's serial console: the host shows its
//! tail when the VM hangs.
//!
//! Nothing here is VM-specific except the paths, so the host's unit tests run it too.

use std::{
    fs::{self, File},
    os::unix::process::{CommandExt, ExitStatusExt},
    path::Path,
    process::{Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{killpg, Signal},
    unistd::Pid,
};

use super::plan::{
    read_json, write_json, Exit, JobRecord, JobSpec, Plan, Ready, Spool, StepRecord,
};

/// The `PATH` every job starts with (the job's own env may replace it).
pub const JOB_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long one `modprobe` or `mount` may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the plan in `spool`. Errors only when the spool itself cannot be used: a job or
/// step that fails is a record, not an error.
pub fn run(spool: &Spool) -> std::io::Result<()> {
    write_json(
        &spool.ready(),
        &Ready {
            uptime_secs: uptime_secs(),
        },
    )?;
    let plan: Plan = read_json(&spool.plan())?.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} is missing", spool.plan().display()),
        )
    })?;
    let steps = prepare(&plan);
    write_json(&spool.prepared(), &steps)?;
    for (index, job) in plan.jobs.iter().enumerate() {
        console(&format!(
            "[{}/{}] {} started",
            index + 1,
            plan.jobs.len(),
            job.name
        ));
        fs::write(spool.started(index), b"")?;
        let record = run_job(job, &spool.stdout(index), &spool.stderr(index))?;
        console(&format!(
            "[{}/{}] {}: {:?} in {:.1}s",
            index + 1,
            plan.jobs.len(),
            job.name,
            record.exit,
            record.duration_ms as f64 / 1000.0
        ));
        write_json(&spool.record(index), &record)?;
    }
    fs::write(spool.done(), b"")
}

fn console(line: &str) {
    println!("vm-lane-runner: {line}");
}

fn uptime_secs() -> f64 {
    fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Loads the plan's modules in order, then mounts bpffs and cgroup2 when asked.
fn prepare(plan: &Plan) -> Vec<StepRecord> {
    let mut steps = Vec::new();
    for module in &plan.modules {
        steps.push(step(&format!("modprobe {module}"), "modprobe", &[module]));
    }
    if plan.mount_bpf_and_cgroup {
        for (fstype, target) in [("bpf", "/sys/fs/bpf"), ("cgroup2", "/sys/fs/cgroup")] {
            steps.push(step(
                &format!("mount {fstype} {target}"),
                "mount",
                &["-t", fstype, fstype, target],
            ));
        }
    }
    for s in steps.iter().filter(|s| !s.ok) {
        console(&format!("{} FAILED: {}", s.step, s.detail));
    }
    steps
}

/// Runs one preparation command with a bound, keeping its error output.
fn step(name: &str, program: &str, args: &[&str]) -> StepRecord {
    let spec = JobSpec {
        name: name.to_string(),
        program: program.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: Vec::new(),
        cwd: "/".into(),
        timeout_ms: STEP_TIMEOUT.as_millis() as u64,
    };
    let dir = std::env::temp_dir();
    let (out, err) = (
        dir.join(format!("vm-lane-step-{}.out", std::process::id())),
        dir.join(format!("vm-lane-step-{}.err", std::process::id())),
    );
    let (ok, detail) = match run_job(&spec, &out, &err) {
        Ok(JobRecord {
            exit: Exit::Code(0),
            ..
        }) => (true, String::new()),
        Ok(record) => {
            let stderr = fs::read_to_string(&err).unwrap_or_default();
            (false, format!("{:?}: {}", record.exit, stderr.trim()))
        }
        Err(e) => (false, format!("cannot record its output: {e}")),
    };
    let _ = fs::remove_file(out);
    let _ = fs::remove_file(err);
    StepRecord {
        step: name.to_string(),
        ok,
        detail,
    }
}

/// Runs `job` with its output in `stdout` / `stderr`, killing its process group at its
/// bound and once it has exited.
pub fn run_job(job: &JobSpec, stdout: &Path, stderr: &Path) -> std::io::Result<JobRecord> {
    let started = Instant::now();
    let mut command = Command::new(&job.program);
    command
        .args(&job.args)
        .env_clear()
        .env("PATH", JOB_PATH)
        .env("HOME", "/root")
        .envs(job.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&job.cwd)
        .stdin(Stdio::null())
        .stdout(File::create(stdout)?)
        .stderr(File::create(stderr)?)
        .process_group(0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return Ok(JobRecord {
                exit: Exit::SpawnFailed(format!("{}: {e}", job.program.display())),
                duration_ms: 0,
            })
        }
    };
    let group = Pid::from_raw(child.id() as i32);
    let bound = Duration::from_millis(job.timeout_ms);
    let exit = loop {
        if let Some(status) = child.try_wait()? {
            break exit_of(status);
        }
        if started.elapsed() >= bound {
            let _ = killpg(group, Signal::SIGKILL);
            child.wait()?;
            break Exit::TimedOut(job.timeout_ms);
        }
        thread::sleep(Duration::from_millis(10));
    };
    // Whatever the job left running in its group goes with it.
    let _ = killpg(group, Signal::SIGKILL);
    Ok(JobRecord {
        exit,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

fn exit_of(status: ExitStatus) -> Exit {
    match (status.code(), status.signal()) {
        (Some(code), _) => Exit::Code(code),
        (None, Some(signal)) => Exit::Signal(signal),
        (None, None) => Exit::Code(-1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(program: &str, args: &[&str], timeout_ms: u64) -> JobSpec {
        JobSpec {
            name: program.into(),
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec![("GREETING".into(), "hello".into())],
            cwd: "/".into(),
            timeout_ms,
        }
    }

    fn run_in(dir: &Path, spec: &JobSpec) -> (JobRecord, String, String) {
        let (out, err) = (dir.join("out"), dir.join("err"));
        let record = run_job(spec, &out, &err).unwrap();
        (
            record,
            fs::read_to_string(out).unwrap(),
            fs::read_to_string(err).unwrap(),
        )
    }

    #[test]
    fn records_status_output_environment_and_bound() {
        let dir = tempfile::tempdir().unwrap();
        let script = "echo $GREETING from $PWD; echo oops >&2; exit 3";
        let (record, out, err) = run_in(dir.path(), &job("/bin/sh", &["-c", script], 10_000));
        assert_eq!(record.exit, Exit::Code(3));
        assert_eq!(out, "hello from /\n");
        assert_eq!(err, "oops\n");

        let started = Instant::now();
        let spec = job("/bin/sh", &["-c", "sleep 30 & sleep 30"], 300);
        let (record, _, _) = run_in(dir.path(), &spec);
        assert_eq!(record.exit, Exit::TimedOut(300));
        assert!(started.elapsed() < Duration::from_secs(5));

        let (record, _, _) = run_in(dir.path(), &job("/bin/sh", &["-c", "kill -9 $$"], 10_000));
        assert_eq!(record.exit, Exit::Signal(9));

        let (record, _, _) = run_in(dir.path(), &job("/no/such/program", &[], 10_000));
        assert!(
            matches!(&record.exit, Exit::SpawnFailed(e) if e.contains("/no/such/program")),
            "{record:?}"
        );
    }

    #[test]
    fn runs_a_plan_and_writes_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path());
        let plan = Plan {
            modules: Vec::new(),
            mount_bpf_and_cgroup: false,
            jobs: vec![
                job("/bin/sh", &["-c", "echo one"], 10_000),
                job("/bin/sh", &["-c", "exit 1"], 10_000),
            ],
        };
        write_json(&spool.plan(), &plan).unwrap();
        run(&spool).unwrap();
        assert!(read_json::<Ready>(&spool.ready()).unwrap().is_some());
        assert_eq!(
            read_json::<Vec<StepRecord>>(&spool.prepared()).unwrap(),
            Some(vec![])
        );
        let first: JobRecord = read_json(&spool.record(0)).unwrap().unwrap();
        assert_eq!(first.exit, Exit::Code(0));
        assert_eq!(fs::read_to_string(spool.stdout(0)).unwrap(), "one\n");
        let second: JobRecord = read_json(&spool.record(1)).unwrap().unwrap();
        assert_eq!(second.exit, Exit::Code(1));
        assert!(spool.started(1).exists() && spool.done().exists());
    }
}
