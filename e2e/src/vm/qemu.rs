//! Booting the VM and watching it: the `qemu-system-x86_64` command line, and the host's
//! watch loop, which follows the runner's progress files in the results share and kills
//! qemu when a phase outlives its bound.
//!
//! `-accel tcg` always: KVM hangs on this machine. `-nodefaults` leaves out the VGA card,
//! NIC and other default devices the lane has no use for. The host root is shared
//! read-only (`multidevs=remap` because it spans several host filesystems); the results
//! directory is the only writable share.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use super::{
    error::VmError,
    kernel::Kernel,
    plan::Spool,
    report::{Phase, Timings, VmStatus},
};

/// How often the host looks at the results share.
const POLL: Duration = Duration::from_millis(100);

/// One VM to boot.
pub(super) struct Machine<'a> {
    pub qemu: &'a Path,
    pub kernel: &'a Kernel,
    pub initramfs: &'a Path,
    pub runner: &'a Path,
    pub spool: &'a Spool,
    pub console: &'a Path,
    pub qemu_log: &'a Path,
    pub cpus: u32,
    pub memory_mib: u32,
}

/// The bound of each phase.
pub(super) struct Bounds {
    pub boot: Duration,
    /// Per job, in order: the job's own bound plus the grace.
    pub jobs: Vec<(String, Duration)>,
    pub shutdown: Duration,
}

/// Refuses paths qemu's option syntax or the kernel command line would split.
pub(super) fn check_path(what: &'static str, path: &Path) -> Result<(), VmError> {
    let text = path.to_string_lossy();
    if text.contains(|c: char| c.is_whitespace() || c == ',' || c == '"' || c == '\'') {
        return Err(VmError::UnsafePath {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

impl Machine<'_> {
    fn command(&self) -> Command {
        let append = format!(
            "console=ttyS0 panic=-1 quiet sy_runner={}",
            self.runner.display()
        );
        let mut c = Command::new(self.qemu);
        c.args(["-accel", "tcg", "-cpu", "max"])
            .args(["-smp", &self.cpus.to_string()])
            .args(["-m", &self.memory_mib.to_string()])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .arg("-no-reboot")
            .arg("-serial")
            .arg(format!("file:{}", self.console.display()))
            .arg("-kernel")
            .arg(&self.kernel.image)
            .arg("-initrd")
            .arg(self.initramfs)
            .args(["-append", &append])
            .arg("-virtfs")
            .arg("local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=results,security_model=none",
                self.spool.dir().display()
            ));
        c
    }

    /// Boots the VM and watches it until qemu exits or is killed.
    pub fn run(&self, bounds: &Bounds) -> Result<(VmStatus, Timings), VmError> {
        let log = File::create(self.qemu_log).map_err(|e| VmError::io(self.qemu_log, e))?;
        let started = Instant::now();
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(VmError::Spawn)?;
        let mut watch = Watch {
            child,
            spool: self.spool,
            started,
            timings: Timings::default(),
            next_job: 0,
            phase: Phase::Boot,
            phase_since: started,
        };
        let status = watch.until_exit(bounds, self.qemu_log)?;
        watch.timings.wall = started.elapsed();
        Ok((status, watch.timings))
    }
}

struct Watch<'a> {
    child: Child,
    spool: &'a Spool,
    started: Instant,
    timings: Timings,
    /// The first job without a record.
    next_job: usize,
    phase: Phase,
    phase_since: Instant,
}

impl Watch<'_> {
    fn until_exit(&mut self, bounds: &Bounds, qemu_log: &Path) -> Result<VmStatus, VmError> {
        loop {
            self.follow(bounds);
            if let Some(status) = self.child.try_wait().map_err(VmError::Spawn)? {
                // A last look: the runner may have finished between two polls.
                self.follow(bounds);
                if self.timings.finished.is_some() {
                    return Ok(VmStatus::Completed);
                }
                let log = std::fs::read_to_string(qemu_log).unwrap_or_default();
                return Ok(VmStatus::Died {
                    phase: self.phase.clone(),
                    qemu: format!("qemu {status}; {}", log.trim()),
                });
            }
            let bound = match &self.phase {
                Phase::Boot => bounds.boot,
                Phase::Job { index, .. } => bounds.jobs[*index].1,
                Phase::Shutdown => bounds.shutdown,
            };
            let after = self.phase_since.elapsed();
            if after > bound {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Ok(VmStatus::Hung {
                    phase: self.phase.clone(),
                    after,
                    bound,
                });
            }
            thread::sleep(POLL);
        }
    }

    /// Advances the phase from the files the runner has written so far.
    fn follow(&mut self, bounds: &Bounds) {
        let now = Instant::now();
        if self.timings.ready.is_none() && self.spool.ready().exists() {
            self.timings.ready = Some(self.started.elapsed());
        }
        if self.phase == Phase::Boot {
            if !self.spool.prepared().exists() {
                return;
            }
            self.timings.prepared = Some(self.started.elapsed());
            self.enter(self.job_phase(bounds), now);
        }
        while self.next_job < bounds.jobs.len() && self.spool.record(self.next_job).exists() {
            self.next_job += 1;
            self.enter(self.job_phase(bounds), now);
        }
        if self.next_job == bounds.jobs.len()
            && self.timings.finished.is_none()
            && self.spool.done().exists()
        {
            self.timings.finished = Some(self.started.elapsed());
        }
    }

    fn job_phase(&self, bounds: &Bounds) -> Phase {
        match bounds.jobs.get(self.next_job) {
            Some((name, _)) => Phase::Job {
                index: self.next_job,
                name: name.clone(),
            },
            // No job left: the runner writes `done` and init powers off.
            None => Phase::Shutdown,
        }
    }

    fn enter(&mut self, phase: Phase, now: Instant) {
        if phase != self.phase {
            self.phase = phase;
            self.phase_since = now;
        }
    }
}

/// The lane's files for one boot: the results share and, beside it, the logs.
pub(super) struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn spool(&self) -> Spool {
        Spool::new(self.root.join("share"))
    }

    pub fn console(&self) -> PathBuf {
        self.root.join("console.log")
    }

    pub fn qemu_log(&self) -> PathBuf {
        self.root.join("qemu.log")
    }
}
