//! Restarts keep the dataplane (issue 14, defects 1 and 10), with the real binary:
//!
//! - the agent is killed with SIGKILL and, after a Service's endpoints changed, restarted
//!   while its dataplane refuses every transaction (a wrapper first on the agent's `PATH`
//!   exits 1 while a flag file exists; the nftables engine, which runs no tool, refuses
//!   itself on the same flag): the rules the killed process left keep serving the
//!   ClusterIP all along; once transactions pass again the agent syncs and becomes
//!   healthy.
//!
//! Run for nftables and for iptables (both backends). A restart into another mode with
//! endpoints changed while the agent was down (defect 10) is played for every pair of
//! engines in `chaos_switch.rs`.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use serde_yaml::Value;
use switchyard_e2e::{
    manifests::{
        cluster_ip_service, node_object, proxy_config, ready_slice, ManifestDir, TestPort,
    },
    netns::run_cmd,
    require_root, Outcome, Proto, Sandbox,
};

const T: Duration = Duration::from_millis(500);
const VIP: &str = "172.30.7.1";
const POD_A: &str = "10.181.0.1";
const POD_B: &str = "10.181.0.2";
const PORT: TestPort = TestPort {
    name: "http",
    port: 80,
    protocol: "TCP",
    target: 8080,
};

fn service() -> Value {
    cluster_ip_service("restart", VIP, PORT)
}

fn slice(ips: &[&str]) -> Value {
    ready_slice("restart", PORT, ips)
}

/// The backends that answered `tries` requests from the pod client (failures by name).
fn answers(sb: &Sandbox, tries: usize) -> Result<BTreeSet<String>> {
    let dst: SocketAddr = format!("{VIP}:{}", PORT.port).parse()?;
    let mut seen = BTreeSet::new();
    for _ in 0..tries {
        seen.insert(match sb.probe("pod", dst, Proto::Tcp, T)? {
            Outcome::Answered { backend, .. } => backend,
            other => other.to_string(),
        });
    }
    Ok(seen)
}

fn only(pod: &str) -> BTreeSet<String> {
    BTreeSet::from([format!("{pod}:{}", PORT.target)])
}

/// A directory of wrappers for dataplane tools: each runs the real tool, unless the
/// flag file exists and its input is one of our sync transactions (a line matches
/// `marker`), which it then refuses as a kernel rejecting the transaction would. The
/// capability probe's test transactions and our cleanups pass.
struct RefusingTools {
    dir: ManifestDir,
}

impl RefusingTools {
    fn new(tools: &[&str], marker: &str) -> Result<RefusingTools> {
        let dir = ManifestDir::new_temp("tools")?;
        for tool in tools {
            let real = run_cmd(Command::new("sh").args(["-c", &format!("command -v {tool}")]))
                .with_context(|| format!("{tool} not installed"))?;
            let flag = dir.path().join("refuse");
            let script = format!(
                "#!/bin/sh\nin=$(mktemp)\ncat > \"$in\"\n\
                 if [ -e {flag} ] && grep -q -- '{marker}' \"$in\"; then\n\
                 rm -f \"$in\"; echo 'refused by the restart test' >&2; exit 1\nfi\n\
                 {real} \"$@\" < \"$in\"\nrc=$?\nrm -f \"$in\"\nexit $rc\n",
                flag = flag.display(),
                real = real.trim()
            );
            let path = dir.path().join(tool);
            std::fs::write(&path, script)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
        Ok(RefusingTools { dir })
    }

    fn flag(&self) -> PathBuf {
        self.dir.path().join("refuse")
    }

    fn refuse(&self, on: bool) -> Result<()> {
        if on {
            std::fs::write(self.flag(), "")?;
        } else {
            std::fs::remove_file(self.flag())?;
        }
        Ok(())
    }

    /// The agent's environment: the wrappers first on its PATH.
    fn env(&self) -> Vec<(String, String)> {
        let path = std::env::var("PATH").unwrap_or_default();
        vec![(
            "PATH".to_string(),
            format!("{}:{path}", self.dir.path().display()),
        )]
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// The tools each engine applies its syncs with, and a line only its syncs hold (its
/// cleanups delete chains and tables, they add no rule). The nftables engine runs no
/// tool (its transactions are netlink batches): it refuses them itself while the flag
/// file exists (`SWITCHYARD_FAULT_NFT_REFUSE`, see [`fault_env`]).
fn tools(mode: &str, backend: &str) -> (Vec<String>, &'static str) {
    if mode == "nftables" {
        return (Vec::new(), "");
    }
    let tools = ["iptables", "ip6tables"]
        .iter()
        .map(|t| format!("{t}-{backend}-restore"))
        .collect();
    (tools, "^-A SY-")
}

/// The agent's environment for `mode`: the wrappers first on its PATH, and for nftables
/// the engine's own refusal switch on the same flag file.
fn fault_env(mode: &str, wrappers: &RefusingTools) -> Vec<(String, String)> {
    let mut env = wrappers.env();
    if mode == "nftables" {
        env.push((
            "SWITCHYARD_FAULT_NFT_REFUSE".to_string(),
            wrappers.flag().display().to_string(),
        ));
    }
    env
}

fn sandbox() -> Result<Sandbox> {
    let mut sb = Sandbox::new()?;
    for ip in [POD_A, POD_B] {
        sb.add_pod(&[ip.parse::<IpAddr>()?], &[PORT.target])?;
    }
    Ok(sb)
}

fn kill_and_restart_while_refused(mode: &str, backend: &str) -> Result<()> {
    let mut sb = sandbox()?;
    let dir = ManifestDir::new_temp("restart")?;
    dir.write(&node_object())?;
    dir.write(&proxy_config(mode, &Default::default()))?;
    dir.write(&service())?;
    dir.write(&slice(&[POD_A, POD_B]))?;
    let (names, marker) = tools(mode, backend);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let wrappers = RefusingTools::new(&names, marker)?;
    let env = fault_env(mode, &wrappers);
    let args = ["--iptables-backend", backend];
    sb.run_agent_with_env(dir.path(), &args, &env)?;
    sb.wait_healthy(Duration::from_secs(30))?;
    let both: BTreeSet<String> = [POD_A, POD_B].iter().flat_map(|p| only(p)).collect();
    ensure!(answers(&sb, 16)? == both, "before the restart");

    sb.agent_mut()?.kill();
    wrappers.refuse(true)?;
    // Pod B leaves the Service while the agent is down, so the restarted agent must
    // write (an engine adopting unchanged rules would have nothing to refuse); both
    // pods keep answering, so the old rules keep serving until it can.
    dir.write(&slice(&[POD_A]))?;
    sb.run_agent_with_env(dir.path(), &args, &env)?;
    // Three refused syncs (1 s, 2 s backoff), traffic served all along.
    let start = Instant::now();
    while sb.agent_log().matches("retrying with a full sync").count() < 3 {
        let seen = answers(&sb, 2)?;
        ensure!(
            seen.is_subset(&both),
            "ClusterIP traffic broke after a restart whose first sync was refused: {seen:?}\nagent log:\n{}",
            sb.agent_log()
        );
        if start.elapsed() > Duration::from_secs(20) {
            bail!(
                "the restarted agent did not try (and fail) three times within 20 s (wrappers in {}); log:\n{}",
                wrappers.path().display(),
                sb.agent_log()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
    ensure!(
        answers(&sb, 16)? == both,
        "rules lost while the first sync is refused"
    );
    wrappers.refuse(false)?;
    sb.wait_healthy(Duration::from_secs(30))?;
    ensure!(
        answers(&sb, 16)? == only(POD_A),
        "after the agent recovered"
    );
    Ok(())
}

#[test]
fn kill_restart_with_refused_first_sync_keeps_rules_nftables() -> Result<()> {
    if !require_root("kill_restart_with_refused_first_sync_keeps_rules_nftables") {
        return Ok(());
    }
    kill_and_restart_while_refused("nftables", "nft")
}

#[test]
fn kill_restart_with_refused_first_sync_keeps_rules_iptables() -> Result<()> {
    if !require_root("kill_restart_with_refused_first_sync_keeps_rules_iptables") {
        return Ok(());
    }
    kill_and_restart_while_refused("iptables", "nft")?;
    kill_and_restart_while_refused("iptables", "legacy")
}
