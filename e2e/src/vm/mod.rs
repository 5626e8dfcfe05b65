//! The qemu VM lane: runs commands — typically the project's own test binaries — inside a
//! VM booting Debian's `linux-image-amd64`, for what the host kernel lacks (IPVS: the host
//! has no `CONFIG_IP_VS`). DESIGN.md "The VM lane".
//!
//! One boot serves many jobs. The VM mounts the host's root read-only over 9p and chroots
//! into it, so the host's binaries, `nft`, `iptables` and `ip netns` run unchanged; a
//! second, writable 9p share is the results spool. Before the first job the runner loads
//! the kernel modules ([`IPVS_MODULES`] by default: `br_netfilter`, because the
//! sandbox's pods share a bridge and their replies skip conntrack without it;
//! `crc32c_generic` before `ip_vs`, whose `libcrc32c` otherwise finds no crc32c) and
//! mounts bpffs and cgroup2.
//!
//! ```text
//! host: VmLane::run(jobs) ── plan.json ──► share ◄── records, stdout, stderr ── VM: runner
//!        watches the share; kills qemu                                            (chroot
//!        when a phase outlives its bound                                           of host /)
//! ```
//!
//! - [`VmLane`], [`Job`]: configure and run; [`VmReport`]: what came back.
//! - [`TestBinary`]: one job per test of a Rust test binary, with a verdict per test.
//! - Inside: [`initramfs`] (busybox init, cached by content), [`kernel`], [`qemu`] (boot
//!   and watch), [`runner`] (the `vm-lane-runner` binary's logic), [`plan`] (the files in
//!   the share).
//!
//! Needs root: the kernel image is readable by root only, and the root share must read
//! every file. Measured costs are in `e2e/README.md` ("VM lane").

mod cpio;
mod error;
pub mod initramfs;
pub mod kernel;
mod libtest;
pub mod plan;
mod qemu;
mod report;
pub mod runner;

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

pub use error::VmError;
pub use kernel::Kernel;
pub use libtest::{TestBinary, TestVerdict};
pub use plan::Exit;
pub use report::{JobOutcome, Phase, Timings, VmReport, VmStatus};

use plan::{read_json, write_json, JobRecord, JobSpec, Plan, StepRecord};
use qemu::{check_path, Bounds, Machine, RunDir};

/// The modules loaded before the first job, in order.
pub const IPVS_MODULES: [&str; 10] = [
    "br_netfilter",
    "crc32c_generic",
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_lc",
    "ip_vs_wlc",
    "ip_vs_sh",
    "ip_vs_mh",
    "nf_conntrack",
];

/// Host variables every job gets (when set), besides every `SWITCHYARD_*` one.
const PASSED_THROUGH: [&str; 4] = ["CI", "RUST_BACKTRACE", "RUST_LIB_BACKTRACE", "RUST_LOG"];

/// Set to `1` in every job's environment.
pub const IN_VM_VAR: &str = "SWITCHYARD_VM_LANE";

static NEXT_RUN: AtomicUsize = AtomicUsize::new(0);

/// One command to run in the VM.
#[derive(Clone, Debug)]
pub struct Job {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Added to (and overriding) the variables passed through from the host.
    pub env: Vec<(String, String)>,
    /// Default: the host process's current directory.
    pub cwd: Option<PathBuf>,
    /// The runner kills the job (its whole process group) after this long.
    pub timeout: Duration,
}

impl Job {
    /// A job with no arguments and a 10-minute bound.
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>) -> Self {
        Job {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            timeout: Duration::from_secs(600),
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// A configured lane: kernel, initramfs, runner, VM size and bounds.
#[derive(Clone, Debug)]
pub struct VmLane {
    kernel: Kernel,
    initramfs: PathBuf,
    qemu: PathBuf,
    runner: PathBuf,
    work_dir: PathBuf,
    cpus: u32,
    memory_mib: u32,
    modules: Vec<String>,
    mount_bpf_and_cgroup: bool,
    boot_timeout: Duration,
    hang_grace: Duration,
}

/// `$CARGO_TARGET_DIR`, else `<workspace>/target`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::agent::workspace_root().join("target"))
}

/// `$SWITCHYARD_VM_RUNNER`, else `vm-lane-runner` in the profile directory of the running
/// executable (`target/debug/deps/x` → `target/debug/vm-lane-runner`).
fn default_runner() -> PathBuf {
    if let Some(path) = std::env::var_os("SWITCHYARD_VM_RUNNER") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().unwrap_or(Path::new("."));
    let profile = if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    profile.join("vm-lane-runner")
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

impl VmLane {
    /// The newest Debian kernel, its initramfs (built or cached under `target/vm-lane`),
    /// 2 vCPUs, 2 GiB, [`IPVS_MODULES`], a 120 s boot bound and a 30 s grace past each
    /// job's own bound.
    pub fn new() -> Result<VmLane, VmError> {
        let qemu = find_program("qemu-system-x86_64").ok_or(VmError::MissingTool {
            tool: "qemu-system-x86_64",
            package: "qemu-system-x86",
        })?;
        let busybox = Path::new(initramfs::BUSYBOX);
        if !busybox.is_file() {
            return Err(VmError::MissingTool {
                tool: "/bin/busybox",
                package: "busybox-static",
            });
        }
        let kernel = Kernel::newest_debian(Path::new("/boot"), Path::new("/lib/modules"))?;
        let work_dir = target_dir().join("vm-lane");
        let initramfs = initramfs::build(&kernel, busybox, &work_dir)?;
        Ok(VmLane {
            kernel,
            initramfs,
            qemu,
            runner: default_runner(),
            work_dir,
            cpus: 2,
            memory_mib: 2048,
            modules: IPVS_MODULES.iter().map(|m| m.to_string()).collect(),
            mount_bpf_and_cgroup: true,
            boot_timeout: Duration::from_secs(120),
            hang_grace: Duration::from_secs(30),
        })
    }

    /// The runner binary to start in the VM (a package's own tests pass
    /// `env!("CARGO_BIN_EXE_vm-lane-runner")`).
    pub fn runner(mut self, path: impl Into<PathBuf>) -> Self {
        self.runner = path.into();
        self
    }

    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus.max(1);
        self
    }

    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// The modules to load before the first job, instead of [`IPVS_MODULES`] (e.g. none,
    /// to see a node whose `ip_vs` is not loaded).
    pub fn modules<I: IntoIterator<Item = S>, S: Into<String>>(mut self, modules: I) -> Self {
        self.modules = modules.into_iter().map(Into::into).collect();
        self
    }

    /// How long boot (kernel, init, module loading) may take.
    pub fn boot_timeout(mut self, bound: Duration) -> Self {
        self.boot_timeout = bound;
        self
    }

    /// How long past a job's own bound the host waits before it kills the whole VM (the
    /// runner kills the job at its bound; only a VM that stopped responding needs this).
    pub fn hang_grace(mut self, grace: Duration) -> Self {
        self.hang_grace = grace;
        self
    }

    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// Boots once and runs `jobs` in order. `Err` only when the lane could not start; a
    /// VM that hung or died is [`VmReport::status`] (see [`VmReport::vm_result`]), with
    /// the outcomes of the jobs that did finish.
    pub fn run(&self, jobs: &[Job]) -> Result<VmReport, VmError> {
        if !self.runner.is_file() {
            return Err(VmError::NoRunner {
                path: self.runner.clone(),
            });
        }
        check_path("runner", &self.runner)?;
        let dir = RunDir {
            root: self.work_dir.join(format!(
                "run-{}-{}",
                std::process::id(),
                NEXT_RUN.fetch_add(1, Ordering::Relaxed)
            )),
        };
        prune_old_runs(&self.work_dir);
        let spool = dir.spool();
        let _ = std::fs::remove_dir_all(&dir.root);
        std::fs::create_dir_all(spool.dir()).map_err(|e| VmError::io(spool.dir(), e))?;
        check_path("results directory", spool.dir())?;
        let plan = Plan {
            modules: self.modules.clone(),
            mount_bpf_and_cgroup: self.mount_bpf_and_cgroup,
            jobs: jobs.iter().map(job_spec).collect(),
        };
        write_json(&spool.plan(), &plan).map_err(|e| VmError::io(spool.plan(), e))?;

        let (console, qemu_log) = (dir.console(), dir.qemu_log());
        let machine = Machine {
            qemu: &self.qemu,
            kernel: &self.kernel,
            initramfs: &self.initramfs,
            runner: &self.runner,
            spool: &spool,
            console: &console,
            qemu_log: &qemu_log,
            cpus: self.cpus,
            memory_mib: self.memory_mib,
        };
        let bounds = Bounds {
            boot: self.boot_timeout,
            jobs: jobs
                .iter()
                .map(|j| (j.name.clone(), j.timeout + self.hang_grace))
                .collect(),
            shutdown: self.hang_grace,
        };
        let (status, timings) = machine.run(&bounds)?;
        let report = collect(&spool, jobs, status, timings, &console)?;
        if report.status == VmStatus::Completed
            && std::env::var("SWITCHYARD_E2E_KEEP").as_deref() != Ok("1")
        {
            let _ = std::fs::remove_dir_all(&dir.root);
        }
        Ok(report)
    }
}

/// Runs that did not complete keep their directory for a look; a day later it goes.
fn prune_old_runs(work_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(work_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(24 * 3600));
        if old && entry.file_name().to_string_lossy().starts_with("run-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn job_spec(job: &Job) -> JobSpec {
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| PASSED_THROUGH.contains(&k.as_str()) || k.starts_with("SWITCHYARD_"))
        .collect();
    env.push((IN_VM_VAR.to_string(), "1".to_string()));
    env.extend(job.env.iter().cloned());
    JobSpec {
        name: job.name.clone(),
        program: job.program.clone(),
        args: job.args.clone(),
        env,
        cwd: job
            .cwd
            .clone()
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_else(|| "/".into()),
        timeout_ms: job.timeout.as_millis() as u64,
    }
}

/// Reads back what the runner wrote.
fn collect(
    spool: &plan::Spool,
    jobs: &[Job],
    status: VmStatus,
    mut timings: Timings,
    console: &Path,
) -> Result<VmReport, VmError> {
    let io = |path: PathBuf| move |e| VmError::io(path, e);
    let ready: Option<plan::Ready> = read_json(&spool.ready()).map_err(io(spool.ready()))?;
    timings.uptime_at_ready = ready.map(|r| Duration::from_secs_f64(r.uptime_secs.max(0.0)));
    let prepare: Vec<StepRecord> = read_json(&spool.prepared())
        .map_err(io(spool.prepared()))?
        .unwrap_or_default();
    let mut outcomes = Vec::with_capacity(jobs.len());
    for (index, job) in jobs.iter().enumerate() {
        let record: Option<JobRecord> =
            read_json(&spool.record(index)).map_err(io(spool.record(index)))?;
        outcomes.push(JobOutcome {
            name: job.name.clone(),
            duration: Duration::from_millis(record.as_ref().map_or(0, |r| r.duration_ms)),
            exit: record.map(|r| r.exit),
            stdout: read_lossy(&spool.stdout(index)),
            stderr: read_lossy(&spool.stderr(index)),
        });
    }
    Ok(VmReport {
        status,
        prepare,
        jobs: outcomes,
        timings,
        console: console.to_path_buf(),
        console_tail: report::tail(&read_lossy(console), 30),
    })
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}
