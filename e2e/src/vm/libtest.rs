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
    /// The `[[test]]` target name, e.g. `sandbox_selftest`.
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
    name: String,
    kind: Vec<String>,
}

impl TestBinary {
    /// Builds (when stale) and locates integration test target `test` (the file name
    /// under a package's `tests/`), which must be unique in the workspace.
    pub fn from_cargo(test: &str) -> Result<TestBinary, VmError> {
        let err = |detail: String| VmError::TestBinary {
            test: test.to_string(),
            detail,
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let manifest = crate::agent::workspace_root().join("Cargo.toml");
        let out = Command::new(cargo)
            .args(["test", "--workspace", "--no-run", "--message-format=json"])
            .args(["--test", test, "--manifest-path"])
            .arg(&manifest)
            .output()
            .map_err(|e| err(format!("cannot run cargo: {e}")))?;
        if !out.status.success() {
            return Err(err(format!(
                "cargo exited with {}: {}",
                out.status,
                super::report::tail(&String::from_utf8_lossy(&out.stderr), 20)
            )));
        }
        let found: Vec<TestBinary> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Artifact>(l).ok())
            .filter(|a| a.reason == "compiler-artifact")
            .filter_map(|a| {
                let target = a.target?;
                let ours = target.name == test && target.kind.iter().any(|k| k == "test");
                let dir = a.manifest_path?.parent()?.to_path_buf();
                ours.then_some(TestBinary {
                    name: test.to_string(),
                    path: a.executable?,
                    package_dir: dir,
                })
            })
            .collect();
        match <[TestBinary; 1]>::try_from(found) {
            Ok([binary]) => Ok(binary),
            Err(found) if found.is_empty() => Err(err("cargo built no such test target".into())),
            Err(found) => Err(err(format!(
                "{} packages have a test target of that name",
                found.len()
            ))),
        }
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
