//! Runs every packet-flow scenario — the shared ones (`<workspace>/../shared/scenarios`, or
//! `$SWITCHYARD_SCENARIOS_DIR`) and ours (`e2e/scenarios`) — against the real agent in
//! nftables mode, in iptables mode on both backends, in ebpf mode, and in ipvs mode (on a
//! kernel with IPVS: the VM lane runs it, the host skips it loudly), one sandbox per
//! scenario, printing a report per file and failing with the list of every failed flow.
//!
//! `SWITCHYARD_SCENARIO=<substring>` runs only matching files; `SWITCHYARD_PENDING=a,b`
//! adds flow names (or `scenario/flow`) to the pending list.

use std::path::PathBuf;

use switchyard_e2e::{
    agent::workspace_root, require_ipvs, require_root, scenario::scenario_files, Runner,
};

/// Flows known not to work yet (`scenario/flow`), reported as PENDING.
const PENDING: &[&str] = &[];

fn shared_dir() -> PathBuf {
    let dir = match std::env::var_os("SWITCHYARD_SCENARIOS_DIR") {
        Some(d) => PathBuf::from(d),
        None => workspace_root().join("../shared/scenarios"),
    };
    assert!(
        dir.is_dir(),
        "scenario directory {} is missing (set SWITCHYARD_SCENARIOS_DIR)",
        dir.display()
    );
    dir
}

fn run_all(mode: &str, agent_args: &[&str]) {
    let mut files = scenario_files(&shared_dir()).expect("listing shared scenarios");
    let own = workspace_root().join("e2e/scenarios");
    if own.is_dir() {
        files.extend(scenario_files(&own).expect("listing e2e/scenarios"));
    }
    if let Ok(filter) = std::env::var("SWITCHYARD_SCENARIO") {
        files.retain(|f| f.to_string_lossy().contains(&filter));
    }
    assert!(!files.is_empty(), "no scenario files found");
    let extra_pending: Vec<String> = std::env::var("SWITCHYARD_PENDING")
        .map(|s| s.split(',').map(|p| p.trim().to_string()).collect())
        .unwrap_or_default();
    let runner = Runner::new(mode)
        .agent_args(agent_args.iter().copied())
        .pending(PENDING.iter().copied())
        .pending(extra_pending);

    let mut failures = Vec::new();
    let mut summary = Vec::new();
    for file in &files {
        match runner.run_file(file) {
            Ok(report) => summary.push(format!(
                "  ok    {} ({} flows, {} pending)",
                report.scenario,
                report.flows.len(),
                report.count(switchyard_e2e::scenario::Status::Pending)
            )),
            Err(e) => {
                summary.push(format!("  FAIL  {}", file.display()));
                failures.push(format!("{e:#}"));
            }
        }
    }
    println!(
        "=== {mode} {agent_args:?}: {} scenario file(s)\n{}",
        files.len(),
        summary.join("\n")
    );
    if !failures.is_empty() {
        panic!(
            "{} scenario file(s) failed:\n{}",
            failures.len(),
            failures.join("\n\n")
        );
    }
}

#[test]
fn scenarios_nftables() {
    if !require_root("scenarios_nftables") {
        return;
    }
    run_all("nftables", &[]);
}

#[test]
fn scenarios_iptables_nft_backend() {
    if !require_root("scenarios_iptables_nft_backend") {
        return;
    }
    run_all("iptables", &["--iptables-backend", "nft"]);
}

#[test]
fn scenarios_iptables_legacy_backend() {
    if !require_root("scenarios_iptables_legacy_backend") {
        return;
    }
    run_all("iptables", &["--iptables-backend", "legacy"]);
}

/// The eBPF engine: socket programs on a private cgroup holding the sandbox's clients,
/// pins on a private bpffs. Flows whose expectation legitimately differs say so
/// (`by_mode: {ebpf: ...}`, or `e2e/engine-expectations/ebpf.yaml` for shared files).
#[test]
fn scenarios_ebpf() {
    if !require_root("scenarios_ebpf") {
        return;
    }
    run_all("ebpf", &[]);
}

/// IPVS: on a kernel with IPVS only (the VM lane runs it; the host skips it loudly).
#[test]
fn scenarios_ipvs() {
    if !require_root("scenarios_ipvs") || !require_ipvs("scenarios_ipvs") {
        return;
    }
    run_all("ipvs", &[]);
}
