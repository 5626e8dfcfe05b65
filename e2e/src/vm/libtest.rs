//! Running a Rust test binary's tests in the VM, one job per test, so each test has its own
//! exit status, output and time bound, and one that hangs or crashes the process cannot
//! hide the others' results. The tests are listed on the host (`--list` needs no kernel
//! feature); each job runs `BINARY NAME --exact --test-threads=1 --nocapture` from the
//! package's directory, as `cargo test` would.
//!
//! The binary comes from cargo itself (`cargo test --workspace --test NAME --no-run
//! --message-format=json`), so it is the fresh one for this source tree: `--workspace`
//! keeps the feature set of `make test`'s build, so nothing is rebuilt there.

use std::{path::PathBuf, process::Command};

use serde::Deserialize;

use super::{error::VmError, report::JobOutcome, Job};

/// A test binary and the package directory it runs from.
#[derive(Clone, Debug)]
pub struct TestBinary {
    /// The test target's name (its file stem), e.g. `sandbox_selftest`.
    pub name: String,
    pub path: PathBuf,
    pub package_dir: PathBuf,
}

/// Whether one test passed, from its job's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TestVerdict {
    Passed,
    /// With the reason: the exit and where libtest's summary said otherwise.
    Failed(String),
}

#[derive(Deserialize)]
struct Artifact {
    reason: String,
    #[serde(default)]
    target: Option<Target>,
    #[serde(default)]
    executable: Option<PathBuf>,
    #[serde(default)]
    manifest_path: Option<PathBuf>,
}

#[derive(Deserialize)]
struct Target {
    src_path: PathBuf,
    kind: Vec<String>,
}

impl TestBinary {
    /// Builds (when stale) and locates the integration test whose source is `source`,
    /// relative to the workspace root (e.g. `e2e/tests/sandbox_selftest.rs`; several
    /// packages have a `tests/kernel.rs`).
    pub fn from_cargo(source: &str) -> Result<TestBinary, VmError> {
        let root = crate::agent::workspace_root();
        let src = root.join(source);
        let name = src
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let err = |detail: String| VmError::TestBinary {
            test: source.to_string(),
            detail,
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args(["test", "--workspace", "--no-run", "--message-format=json"])
            .args(["--test", &name, "--manifest-path"])
            .arg(root.join("Cargo.toml"))
            .output()
            .map_err(|e| err(format!("cannot run cargo: {e}")))?;
        if !out.status.success() {
            return Err(err(format!(
                "cargo exited with {}: {}",
                out.status,
                super::report::tail(&String::from_utf8_lossy(&out.stderr), 20)
            )));
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Artifact>(l).ok())
            .filter(|a| a.reason == "compiler-artifact")
            .find_map(|a| {
                let target = a.target?;
                let ours = target.src_path == src && target.kind.iter().any(|k| k == "test");
                let dir = a.manifest_path?.parent()?.to_path_buf();
                ours.then_some(TestBinary {
                    name: name.clone(),
                    path: a.executable?,
                    package_dir: dir,
                })
            })
            .ok_or_else(|| err("cargo built no test target from that file".into()))
    }

    /// The names of the tests that are not `#[ignore]`d.
    pub fn list(&self) -> Result<Vec<String>, VmError> {
        let all = self.list_with(&[])?;
        let ignored = self.list_with(&["--ignored"])?;
        Ok(all.into_iter().filter(|t| !ignored.contains(t)).collect())
    }

    fn list_with(&self, extra: &[&str]) -> Result<Vec<String>, VmError> {
        let out = Command::new(&self.path)
            .args(["--list", "--format", "terse"])
            .args(extra)
            .output()
            .map_err(|e| VmError::TestList {
                binary: self.path.clone(),
                detail: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(VmError::TestList {
                binary: self.path.clone(),
                detail: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr)),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_suffix(": test"))
            .map(str::to_string)
            .collect())
    }

    /// The job running test `test` alone; named `<binary>::<test>`.
    pub fn job(&self, test: &str) -> Job {
        Job::new(format!("{}::{test}", self.name), &self.path)
            .args([test, "--exact", "--test-threads=1", "--nocapture"])
            .cwd(&self.package_dir)
            .env(
                "CARGO_MANIFEST_DIR",
                self.package_dir.to_string_lossy().into_owned(),
            )
    }

    /// One job per listed test.
    pub fn jobs(&self) -> Result<Vec<Job>, VmError> {
        Ok(self.list()?.iter().map(|t| self.job(t)).collect())
    }
}

impl TestVerdict {
    /// Passed when the job exited 0 and libtest reported exactly one test passed (so a
    /// name that matched nothing is not a pass).
    pub fn of(outcome: &JobOutcome) -> TestVerdict {
        let ran_one = outcome
            .stdout
            .lines()
            .any(|l| l.starts_with("test result: ok. 1 passed;"));
        if outcome.success() && ran_one {
            TestVerdict::Passed
        } else if outcome.success() {
            TestVerdict::Failed(format!(
                "exited 0 but libtest did not report one passed test\n{}",
                outcome.summary()
            ))
        } else {
            TestVerdict::Failed(outcome.summary())
        }
    }
}
