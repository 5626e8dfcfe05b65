//! kubectl against a simulator, for the kubectl e2e tests.
//!
//! kubectl is found at `$KUBECTL`, else `kubectl` on `PATH` (`scripts/install-deps.sh`
//! installs it when missing). Without it the tests skip loudly, and fail under
//! `CI=true`: a test that cannot run must not pass where it should run.

use std::path::{Path, PathBuf};

use switchyard_kube_sim::KubeSim;

/// The kubectl binary, or `None` (after saying so) when there is none and this is not CI.
pub fn binary() -> Option<PathBuf> {
    let found = std::env::var_os("KUBECTL")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("kubectl"))
                    .find(|p| p.is_file())
            })
        });
    if found.is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(
            !ci,
            "kubectl not found ($KUBECTL or PATH) and CI=true: run scripts/install-deps.sh"
        );
        eprintln!("SKIPPED: kubectl not found ($KUBECTL or PATH); run scripts/install-deps.sh");
    }
    found
}

/// A simulator, a kubeconfig for it and a scratch directory.
pub struct Kubectl {
    pub sim: KubeSim,
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
}

impl Kubectl {
    pub async fn start(name: &str) -> Option<Kubectl> {
        let bin = binary()?;
        let sim = KubeSim::start().await.unwrap();
        let dir = std::env::temp_dir().join(format!("kube-sim-{name}-{}", sim.port()));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig).unwrap();
        Some(Kubectl {
            sim,
            bin,
            dir,
            kubeconfig,
        })
    }

    pub fn file(&self, name: &str, text: &str) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    /// Runs kubectl; returns (success, stdout, stderr).
    pub async fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &self.dir)
            .env_remove("KUBECTL_EXTERNAL_DIFF");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().await.unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub async fn run(&self, args: &[&str]) -> (bool, String, String) {
        self.run_env(args, &[]).await
    }

    /// Runs kubectl, asserting success; returns stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args).await;
        assert!(ok, "kubectl {args:?} failed:\n{out}\n{err}");
        out
    }

    /// Runs kubectl, asserting failure; returns stderr.
    pub async fn fails(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args).await;
        assert!(!ok, "kubectl {args:?} succeeded:\n{out}\n{err}");
        err
    }
}

impl Drop for Kubectl {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs kubectl synchronously against `kubeconfig`: (success, stdout + stderr).
pub fn kubectl_sync(bin: &Path, kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(bin)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", kubeconfig.parent().unwrap())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}
