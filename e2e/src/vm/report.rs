//! What a lane run brings back: per job its exit, output and duration; the preparation
//! steps; how the VM itself ended ([`VmStatus`]); the timings; and the console's tail.

use std::{fmt, path::PathBuf, time::Duration};

use super::{
    error::VmError,
    plan::{Exit, StepRecord},
};

/// Where the VM was when it stopped or was stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// From qemu's start until the modules are loaded.
    Boot,
    Job {
        index: usize,
        name: String,
    },
    /// After the last job, until qemu exits.
    Shutdown,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Phase::Boot => f.write_str("boot"),
            Phase::Job { name, .. } => write!(f, "job '{name}'"),
            Phase::Shutdown => f.write_str("shutdown"),
        }
    }
}

/// How the VM ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmStatus {
    /// Every job ran and the VM powered off.
    Completed,
    /// A phase outlived its bound and the host killed qemu.
    Hung {
        phase: Phase,
        after: Duration,
        bound: Duration,
    },
    /// qemu exited before the runner finished (kernel panic, init failure, qemu error).
    Died { phase: Phase, qemu: String },
}

/// One job's result. `exit` is `None` when the VM stopped before the job finished.
#[derive(Clone, Debug)]
pub struct JobOutcome {
    pub name: String,
    pub exit: Option<Exit>,
    pub stdout: String,
    pub stderr: String,
    pub duration: Duration,
}

impl JobOutcome {
    /// Exited with status 0.
    pub fn success(&self) -> bool {
        self.exit == Some(Exit::Code(0))
    }

    /// A readable account for a failure message: the exit, then the tails of both
    /// outputs.
    pub fn summary(&self) -> String {
        let exit = match &self.exit {
            None => "did not finish (the VM stopped first)".to_string(),
            Some(Exit::Code(c)) => format!("exit status {c}"),
            Some(Exit::Signal(s)) => format!("killed by signal {s}"),
            Some(Exit::TimedOut(ms)) => format!("killed at its {ms} ms bound"),
            Some(Exit::SpawnFailed(e)) => format!("could not start: {e}"),
        };
        format!(
            "job '{}': {exit} after {:.1?}\n--- stdout (tail)\n{}\n--- stderr (tail)\n{}",
            self.name,
            self.duration,
            tail(&self.stdout, 40),
            tail(&self.stderr, 40)
        )
    }
}

/// Where the time went, measured on the host from qemu's start (`ready`, `prepared`,
/// `finished`, `wall`) and inside the VM (`uptime_at_ready`).
#[derive(Clone, Debug, Default)]
pub struct Timings {
    /// Until the runner started in the chrooted host root.
    pub ready: Option<Duration>,
    /// The VM's own uptime at that moment (kernel and init, without qemu's start).
    pub uptime_at_ready: Option<Duration>,
    /// Until the modules were loaded and the jobs could start.
    pub prepared: Option<Duration>,
    /// Until the last job finished.
    pub finished: Option<Duration>,
    /// Until qemu exited (or was killed).
    pub wall: Duration,
}

/// Everything one boot of the lane brought back.
#[derive(Clone, Debug)]
pub struct VmReport {
    pub status: VmStatus,
    pub prepare: Vec<StepRecord>,
    pub jobs: Vec<JobOutcome>,
    pub timings: Timings,
    /// The serial console log (kept with the run directory when the VM did not complete).
    pub console: PathBuf,
    pub console_tail: String,
}

impl VmReport {
    /// The outcome of the job named `name`.
    pub fn job(&self, name: &str) -> Option<&JobOutcome> {
        self.jobs.iter().find(|j| j.name == name)
    }

    /// `Ok` when the VM completed; otherwise the error naming the phase (the hung job) and
    /// the console's tail.
    pub fn vm_result(&self) -> Result<(), VmError> {
        match &self.status {
            VmStatus::Completed => Ok(()),
            VmStatus::Hung {
                phase,
                after,
                bound,
            } => Err(VmError::Hung {
                phase: phase.to_string(),
                after: *after,
                bound: *bound,
                console: self.console.clone(),
                console_tail: self.console_tail.clone(),
            }),
            VmStatus::Died { phase, qemu } => Err(VmError::Died {
                phase: phase.to_string(),
                qemu: qemu.clone(),
                console: self.console.clone(),
                console_tail: self.console_tail.clone(),
            }),
        }
    }

    /// The preparation steps that failed (a module that would not load, a mount).
    pub fn failed_steps(&self) -> Vec<&StepRecord> {
        self.prepare.iter().filter(|s| !s.ok).collect()
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
