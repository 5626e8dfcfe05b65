//! The API-server side of agent tests: the kube API simulator (`kube-sim`), `switchyard
//! operator` and `switchyard agent` as processes inside the sandbox's node namespace, and
//! kubectl talking to the simulator from there. The simulator keeps nothing on disk: every
//! object applied through [`Cluster::apply`] is remembered in a file, so a restarted
//! simulator can be loaded with the state as it stands ([`Cluster::restart_sim`]).

use std::{
    fs::File,
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use crate::{
    agent::{agent_binary, command_in, Mounts},
    manifests::ManifestDir,
    netns::run_cmd,
};

/// A process started inside a namespace (`ip netns exec` execs it, so the pid is its own),
/// output to a log file; SIGTERM then SIGKILL on drop.
pub struct Proc {
    pub name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn start(
        name: &'static str,
        netns: &str,
        mounts: Mounts,
        bin: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        log: PathBuf,
    ) -> Result<Proc> {
        let out = File::create(&log)?;
        let child = command_in(netns, mounts)
            .arg(bin)
            .args(args)
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Proc { name, child, log })
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn stop(&mut self) {
        if !self.running() {
            return;
        }
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && self.running() {
            thread::sleep(Duration::from_millis(20));
        }
        self.kill_hard();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The simulator, operator and agent of one test, plus kubectl.
pub struct Cluster {
    /// The network namespace everything runs in.
    pub netns: String,
    api_port: u16,
    dir: ManifestDir,
    /// The kubeconfig pointing at the simulator.
    pub kubeconfig: PathBuf,
    /// Every object applied so far, as YAML documents (for a simulator restart).
    pub objects: PathBuf,
    pub sim: Option<Proc>,
    pub operator: Option<Proc>,
    pub agent: Option<Proc>,
    /// The mounts the agent sees ([`Mounts::Host`] for the eBPF engine).
    pub agent_mounts: Mounts,
}

impl Cluster {
    fn sim_binary() -> Result<PathBuf> {
        let bin = agent_binary()?
            .parent()
            .ok_or_else(|| anyhow!("agent binary has no directory"))?
            .join("kube-sim");
        if !bin.is_file() {
            bail!(
                "{} missing: run `cargo build --workspace --bins` first",
                bin.display()
            );
        }
        Ok(bin)
    }

    /// Starts the simulator in `netns`, serving on `api_port`.
    pub fn new(netns: &str, api_port: u16) -> Result<Cluster> {
        let dir = ManifestDir::new_temp("kube")?;
        let kubeconfig = dir.path().join("kubeconfig");
        let objects = dir.path().join("objects.yaml");
        std::fs::write(&objects, "")?;
        let mut c = Cluster {
            netns: netns.to_string(),
            api_port,
            dir,
            kubeconfig,
            objects,
            sim: None,
            operator: None,
            agent: None,
            agent_mounts: Mounts::Netns,
        };
        c.start_sim(false)?;
        Ok(c)
    }

    /// Starts kube-sim on its port (with `--load objects.yaml` when `reload`) and waits
    /// until kubectl gets an answer.
    pub fn start_sim(&mut self, reload: bool) -> Result<()> {
        let _ = std::fs::remove_file(&self.kubeconfig);
        let port = self.api_port.to_string();
        let kc = self.kubeconfig.to_string_lossy().into_owned();
        let objects = self.objects.to_string_lossy().into_owned();
        let mut args = vec!["--port", &port, "--kubeconfig", &kc];
        if reload {
            args.extend(["--load", &objects]);
        }
        let log = self.dir.path().join(if reload {
            "kube-sim-2.log"
        } else {
            "kube-sim.log"
        });
        self.sim = Some(Proc::start(
            "kube-sim",
            &self.netns,
            Mounts::Netns,
            &Self::sim_binary()?,
            &args,
            &[],
            log,
        )?);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.kubeconfig.is_file() && self.kubectl(&["get", "--raw", "/version"]).is_ok() {
                return Ok(());
            }
            if !self.sim.as_mut().is_some_and(Proc::running) || Instant::now() > deadline {
                bail!(
                    "kube-sim did not come up; its log:\n{}",
                    self.sim.as_ref().map(Proc::log).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, "kubectl", "--kubeconfig"])
            .arg(&self.kubeconfig)
            .args(args);
        cmd
    }

    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        run_cmd(&mut self.kubectl_cmd(args))
    }

    /// `kubectl apply -f -` of `yaml`; also remembered for a simulator restart.
    pub fn apply(&self, yaml: &str) -> Result<String> {
        let mut child = self
            .kubectl_cmd(&["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(yaml.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl apply failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                yaml
            );
        }
        let mut all = std::fs::read_to_string(&self.objects)?;
        for doc in yaml.split("\n---") {
            if doc.trim().is_empty() {
                continue;
            }
            all.push_str("---\n");
            all.push_str(doc.trim_start_matches('\n'));
            all.push('\n');
        }
        std::fs::write(&self.objects, all)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts the operator and the agent (`switchyard agent --node-name test-node`
    /// followed by `agent_args`).
    pub fn start_node_side(&mut self, agent_args: &[&str]) -> Result<()> {
        let bin = agent_binary()?;
        let kc = self.kubeconfig.to_string_lossy().into_owned();
        let env = [("KUBECONFIG", kc.as_str())];
        self.operator = Some(Proc::start(
            "operator",
            &self.netns,
            Mounts::Netns,
            &bin,
            &[
                "operator",
                "--namespace",
                "kube-system",
                "--identity",
                "e2e-operator",
                "--period",
                "1s",
            ],
            &env,
            self.dir.path().join("operator.log"),
        )?);
        let mut args = vec!["agent", "--node-name", "test-node"];
        args.extend_from_slice(agent_args);
        self.agent = Some(Proc::start(
            "agent",
            &self.netns,
            self.agent_mounts,
            &bin,
            &args,
            &env,
            self.dir.path().join("agent.log"),
        )?);
        Ok(())
    }

    /// Restarts the simulator loaded with `documents` (YAML, `---`-separated) after
    /// `pad_past` padding ConfigMaps: kube-sim counts resourceVersions from 1 again, a
    /// real API server never goes back, so the padding puts the loaded objects past the
    /// last resourceVersion the agent saw and its resumed watches see them as newer
    /// events, as after a real outage.
    pub fn restart_sim(&mut self, documents: &[String], pad_past: u64) -> Result<()> {
        let padding: String = (0..pad_past + 20)
            .map(|i| {
                format!(
                    "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{namespace: padding, name: pad-{i}}}\ndata: {{}}\n"
                )
            })
            .collect();
        let reload = std::iter::once(&padding)
            .chain(documents)
            .map(|d| d.trim_start_matches("---\n").to_string())
            .collect::<Vec<_>>()
            .join("\n---\n");
        std::fs::write(&self.objects, reload)?;
        self.start_sim(true)
    }

    /// The resourceVersion of a list (`path`, e.g. `/apis/discovery.k8s.io/v1/endpointslices`).
    pub fn list_resource_version(&self, path: &str) -> Result<u64> {
        let list = self.kubectl(&["get", "--raw", path])?;
        serde_json::from_str::<serde_json::Value>(&list)?["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("resourceVersion of the list {path}"))
    }

    pub fn logs(&self) -> String {
        [&self.agent, &self.operator, &self.sim]
            .into_iter()
            .flatten()
            .map(|p| format!("----- {} log -----\n{}", p.name, tail(&p.log(), 80)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn agent_running(&mut self) -> bool {
        self.agent.as_mut().is_some_and(Proc::running)
    }
}

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `check` (which returns Ok(None) when satisfied or Ok(Some(last state))) until it
/// holds or `within` passes; the error carries the last state and every log.
pub fn eventually(
    cluster: &Cluster,
    within: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<Option<String>>,
) -> Result<Duration> {
    let start = Instant::now();
    let mut last: String;
    loop {
        match check() {
            Ok(None) => {
                println!("ok: {what} (after {:?})", start.elapsed());
                return Ok(start.elapsed());
            }
            Ok(Some(s)) => last = s,
            Err(e) => last = format!("error: {e:#}"),
        }
        if start.elapsed() > within {
            bail!(
                "{what}: not true within {within:?}; last seen:\n{last}\n{}",
                cluster.logs()
            );
        }
        thread::sleep(Duration::from_millis(250));
    }
}
