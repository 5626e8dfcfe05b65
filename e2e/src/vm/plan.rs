//! What passes between the host and the runner inside the VM, as JSON files in the
//! writable results share: the [`Plan`] the host writes before boot, and the records the
//! runner writes as it goes ([`Ready`], [`StepRecord`], [`JobRecord`]). The host polls the
//! same directory to follow progress, so a file's presence is itself a signal: see
//! [`Spool`].

use std::{
    fs,
    path::{Path, PathBuf},
};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Everything the runner does, in order: prepare the kernel, then run the jobs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Loaded with the host's `modprobe`, in this order, before any job.
    pub modules: Vec<String>,
    /// Mount bpffs on `/sys/fs/bpf` and cgroup2 on `/sys/fs/cgroup`.
    pub mount_bpf_and_cgroup: bool,
    pub jobs: Vec<JobSpec>,
}

/// One command to run inside the VM.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The job's whole environment beyond `PATH` and `HOME` (the runner starts from empty).
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// The runner kills the job's process group after this long.
    pub timeout_ms: u64,
}

/// Written by the runner as soon as it starts: the kernel and root are up.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Ready {
    /// The VM's `/proc/uptime` when the runner started (kernel boot plus init).
    pub uptime_secs: f64,
}

/// One preparation step (a `modprobe`, a mount) and how it went.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    /// e.g. `modprobe ip_vs`, `mount bpf /sys/fs/bpf`.
    pub step: String,
    pub ok: bool,
    /// The tool's error output when it failed.
    pub detail: String,
}

/// How a job ended.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Exit {
    /// Exited with this status.
    Code(i32),
    /// Killed by this signal (not by the runner).
    Signal(i32),
    /// Killed by the runner at its bound (milliseconds).
    TimedOut(u64),
    /// Could not be started at all.
    SpawnFailed(String),
}

/// A finished job, as the runner saw it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    pub exit: Exit,
    pub duration_ms: u64,
}

/// The results directory, shared by host and VM, and the names of the files in it.
#[derive(Clone, Debug)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Spool { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn plan(&self) -> PathBuf {
        self.dir.join("plan.json")
    }

    pub fn ready(&self) -> PathBuf {
        self.dir.join("ready.json")
    }

    /// The preparation steps' records (written once all are done).
    pub fn prepared(&self) -> PathBuf {
        self.dir.join("prepare.json")
    }

    /// Written after the last job: the runner is about to exit.
    pub fn done(&self) -> PathBuf {
        self.dir.join("done")
    }

    /// Created just before job `index` is spawned.
    pub fn started(&self, index: usize) -> PathBuf {
        self.dir.join(format!("job-{index:03}.started"))
    }

    pub fn stdout(&self, index: usize) -> PathBuf {
        self.dir.join(format!("job-{index:03}.stdout"))
    }

    pub fn stderr(&self, index: usize) -> PathBuf {
        self.dir.join(format!("job-{index:03}.stderr"))
    }

    /// The job's [`JobRecord`], written when it has finished.
    pub fn record(&self, index: usize) -> PathBuf {
        self.dir.join(format!("job-{index:03}.json"))
    }
}

/// Writes `value` as JSON to `path`, through a temporary name so a reader polling the
/// directory never sees half a file.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(value)?)?;
    fs::rename(&tmp, path)
}

/// Reads a JSON file written by [`write_json`]; `None` when it is absent.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> std::io::Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
