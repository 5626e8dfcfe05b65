//! The qemu VM lane (`switchyard_e2e::vm`), proven with the project's own tests: one boot
//! of Debian's kernel runs, in order,
//! - `switchyard probe` with the kernel's module autoload off, before anything loaded
//!   `nf_tables`: nftables is unavailable because that module is not loaded but loadable,
//! - `switchyard probe --output json` (IPVS available in the VM, missing on the host),
//! - the probe's kernel tests (`probe/tests/kernel.rs`), one job per test,
//! - `/proc/modules` and three empty jobs (per-job overhead),
//! - every test of `tests/sandbox_selftest.rs` and the nftables scenarios of
//!   `tests/scenarios.rs`, unchanged, one job per test,
//! - the netlink layer's IPVS and rtnetlink kernel tests (`netlink/tests/ipvs_kernel.rs`,
//!   `rtnetlink_kernel.rs`: IPVS services and destinations of both families, the dummy
//!   link; the host has neither), one job per test, required not to skip,
//! - the IPVS engine's kernel tests (`engines/ipvs/tests/kernel.rs`: adoption, drift,
//!   cleanup, one-endpoint changes, graceful termination, `ipvsadm -Ln`) and its helper
//!   table test, one job per test, required not to skip,
//! - every scenario file, shared and own, in ipvs mode, one job per file (30-80 s each
//!   under TCG; `SWITCHYARD_VM_IPVS_SCENARIO=<substring>` narrows them),
//!   the stale UDP flow cleanup in ipvs mode (`tests/udp_conntrack.rs`) and `switchyard
//!   explain` in ipvs mode (`tests/explain.rs`),
//! - fallback both ways (`tests/ipvs_fallback.rs`): with the modules, IPVS runs and no
//!   fallback is reported; then, after `ip_vs` is unloaded and `modprobe ip_vs` made to
//!   fail (`install ip_vs /bin/false` in `/run/modprobe.d`), nftables runs and the
//!   fallback names `ip_vs`,
//! - the conntrack table filled up under the agent (`tests/chaos_conntrack.rs`: the
//!   VM's own global `nf_conntrack_max` shrunk), required not to skip,
//! - the fault-injection rows of issue 14 for the IPVS engine (RELIABILITY.md), short:
//!   `kill -9` during syncs (`chaos_kill.rs`), restarts under TCP and UDP load
//!   (`chaos_restart.rs`), an API server outage (`chaos_api.rs`), drift made with
//!   `ipvsadm` (`chaos_drift.rs`), live switches and changes while down between IPVS and
//!   nftables / iptables (`chaos_switch.rs`), an open connection kept across the switch
//!   away from IPVS until it ends (`mode_switch.rs`), one job per test, required not to
//!   skip (see [`IPVS_FAULT_TESTS`]),
//! - `switchyard probe` in a namespace with a bridge after `modprobe -r br_netfilter`
//!   (the probe warns), then `br_netfilter` again,
//! - a job that outlives its 2 s bound (the runner kills it; the next job still runs),
//! - a job that stops the runner itself, so the VM no longer answers: the host kills qemu
//!   at the job's bound plus the lane's grace, with an error naming the job.
//!
//! Each `#[test]` checks its part of that one boot (booting costs ~10 s under TCG; the
//! whole lane takes about 20 minutes, most of it the ipvs scenario files). Needs root;
//! skips loudly without it, fails under `CI=true`. `SWITCHYARD_VM_SCENARIO` chooses the
//! nftables scenario files (see [`DEFAULT_SCENARIO`]).
//!
//! To iterate on one part, `SWITCHYARD_VM_ONLY=<substring>[,<substring>...]` plans only
//! the jobs whose names contain one of them, and every test reading a job left out fails
//! saying so; pair it with
//! cargo's test filter, e.g. the fault-injection jobs alone:
//! `SWITCHYARD_VM_ONLY=chaos_ cargo test -p switchyard-e2e --test vm_lane -- ipvs_fault conntrack --nocapture`
//! (the IPVS fault rows and the conntrack row: `chaos_` names both).

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use serde_json::Value;
use switchyard_e2e::{
    agent::{agent_binary, workspace_root},
    require_root,
    scenario::scenario_files,
    vm::{Exit, Job, TestBinary, TestVerdict, VmError, VmLane, VmReport, VmStatus},
};

/// The scenario file run in the VM by default in nftables mode: the shared ClusterIP
/// scenario. All twenty files take ~12 minutes per mode under TCG (30-60 s each; under
/// a minute on the host, where `make test` runs them all), so they are opt-in here:
/// `SWITCHYARD_VM_SCENARIO=` (empty matches every file) runs every matching file.
/// In ipvs mode the lane runs every file (the host has no IPVS).
const DEFAULT_SCENARIO: &str = "cluster-ip-general";

/// The IPVS variants of the fault-injection suite (issue 14): (test source, test).
const IPVS_FAULT_TESTS: [(&str, &str); 7] = [
    ("e2e/tests/chaos_kill.rs", "kill_9_during_syncs_ipvs"),
    ("e2e/tests/chaos_restart.rs", "restarts_under_load_ipvs"),
    ("e2e/tests/chaos_api.rs", "api_outage_ipvs"),
    ("e2e/tests/chaos_drift.rs", "drift_repaired_ipvs"),
    ("e2e/tests/chaos_switch.rs", "switch_under_load_ipvs_pairs"),
    (
        "e2e/tests/chaos_switch.rs",
        "mode_and_endpoints_changed_while_down_ipvs_pairs",
    ),
    (
        "e2e/tests/mode_switch.rs",
        "switch_from_ipvs_keeps_connections_until_they_end",
    ),
];
/// A bound for each of them, against hangs: under TCG they take 20 s (drift) to
/// 150-240 s (the kills: each restart of the agent costs 10-30 s there).
const IPVS_FAULT_BOUND: Duration = Duration::from_secs(480);

const HANG_BOUND: Duration = Duration::from_secs(2);
const GRACE: Duration = Duration::from_secs(5);

/// The names of the jobs running a test binary's tests.
struct TestJobs {
    probe: Vec<String>,
    netlink: Vec<String>,
    selftests: Vec<String>,
    scenarios: Vec<String>,
    ipvs_engine: Vec<String>,
    ipvs_scenarios: Vec<String>,
    fallback: [String; 2],
    conntrack: String,
    ipvs_faults: Vec<String>,
}

struct LaneRun {
    report: VmReport,
    tests: TestJobs,
}

/// `sh -c SCRIPT` with the agent binary as `$0`.
fn shell_job(name: &str, script: &str) -> Job {
    let agent = agent_binary().expect("switchyard binary");
    Job::new(name, "/bin/sh").args(["-c", script, &agent.to_string_lossy()])
}

fn names(jobs: &[Job]) -> Vec<String> {
    jobs.iter().map(|j| j.name.clone()).collect()
}

fn jobs() -> (Vec<Job>, TestJobs) {
    let agent = agent_binary().expect("switchyard binary");
    let probe_tests = TestBinary::from_cargo("probe/tests/kernel.rs")
        .and_then(|b| b.jobs())
        .expect("probe/tests/kernel.rs");
    let mut jobs = vec![
        // First: nothing has loaded nf_tables yet.
        shell_job(
            "probe-without-autoload",
            "echo /nonexistent > /proc/sys/kernel/modprobe; \"$0\" probe --output json; \
             rc=$?; echo /sbin/modprobe > /proc/sys/kernel/modprobe; exit $rc",
        ),
        Job::new("probe", &agent).args(["probe", "--output", "json"]),
        Job::new("modules", "/bin/cat").arg("/proc/modules"),
    ];
    let probe_test_names = names(&probe_tests);
    jobs.extend(probe_tests);
    for i in 0..3 {
        jobs.push(Job::new(format!("empty-{i}"), "/bin/true"));
    }
    let selftest =
        TestBinary::from_cargo("e2e/tests/sandbox_selftest.rs").expect("sandbox_selftest");
    let selftests = selftest.jobs().expect("listing sandbox_selftest");
    let scenarios = TestBinary::from_cargo("e2e/tests/scenarios.rs").expect("scenarios");
    let nft_scenarios = scenario_jobs(
        &scenarios,
        "scenarios_nftables",
        "SWITCHYARD_VM_SCENARIO",
        Some(&[DEFAULT_SCENARIO]),
    );
    let (selftest_names, scenario_names) = (names(&selftests), names(&nft_scenarios));
    jobs.extend(selftests);
    jobs.extend(nft_scenarios);
    let netlink = netlink_jobs();
    let netlink_names = names(&netlink);
    jobs.extend(netlink);
    let ipvs_engine = ipvs_engine_jobs();
    let ipvs_engine_names = names(&ipvs_engine);
    jobs.extend(ipvs_engine);
    let ipvs_scenarios = ipvs_scenario_jobs(&scenarios);
    let ipvs_scenario_names = names(&ipvs_scenarios);
    jobs.extend(ipvs_scenarios);
    let ipvs_faults = ipvs_fault_jobs();
    let ipvs_fault_names = names(&ipvs_faults);
    jobs.extend(ipvs_faults);
    // The fallback jobs come after every job that needs IPVS: the second one unloads
    // `ip_vs` and makes `modprobe ip_vs` fail for the rest of the boot.
    let fallback = fallback_jobs();
    let fallback_names = [fallback[0].name.clone(), fallback[1].name.clone()];
    jobs.extend(fallback);
    let conntrack = TestBinary::from_cargo("e2e/tests/chaos_conntrack.rs")
        .expect("chaos_conntrack")
        .job("conntrack_table_full_is_reported_and_the_agent_stays_healthy")
        .env("SWITCHYARD_REQUIRE_VM_FEATURES", "1");
    let conntrack_name = conntrack.name.clone();
    jobs.push(conntrack);
    jobs.push(shell_job(
        "bridge-without-br-netfilter",
        "modprobe -r br_netfilter || exit 99; ip netns add sy-brtest && \
         ip -n sy-brtest link add cbr0 type bridge && \
         ip netns exec sy-brtest \"$0\" probe --output json; rc=$?; \
         ip netns del sy-brtest; modprobe br_netfilter; exit $rc",
    ));
    jobs.push(
        Job::new("sleeper", "/bin/sleep")
            .arg("600")
            .timeout(HANG_BOUND),
    );
    jobs.push(Job::new("after-sleeper", "/bin/echo").arg("still here"));
    // Stops its parent, the runner: nothing in the VM enforces the bound any more.
    jobs.push(
        Job::new("vm-hang", "/bin/sh")
            .args(["-c", "kill -STOP $PPID; sleep 600"])
            .timeout(HANG_BOUND),
    );
    let tests = TestJobs {
        probe: probe_test_names,
        netlink: netlink_names,
        selftests: selftest_names,
        scenarios: scenario_names,
        ipvs_engine: ipvs_engine_names,
        ipvs_scenarios: ipvs_scenario_names,
        fallback: fallback_names,
        conntrack: conntrack_name,
        ipvs_faults: ipvs_fault_names,
    };
    let only = std::env::var("SWITCHYARD_VM_ONLY").unwrap_or_default();
    jobs.retain(|j| only.split(',').any(|part| j.name.contains(part)));
    (jobs, tests)
}

/// The IPVS fault-injection tests ([`IPVS_FAULT_TESTS`]), required not to skip.
fn ipvs_fault_jobs() -> Vec<Job> {
    IPVS_FAULT_TESTS
        .into_iter()
        .map(|(source, test)| {
            TestBinary::from_cargo(source)
                .unwrap_or_else(|e| panic!("{source}: {e}"))
                .job(test)
                .env("SWITCHYARD_REQUIRE_VM_FEATURES", "1")
                .timeout(IPVS_FAULT_BOUND)
        })
        .collect()
}

/// The netlink layer's kernel tests that need what only the VM has (IPVS, the dummy
/// link type), told that a missing feature is a failure there, not a skip.
fn netlink_jobs() -> Vec<Job> {
    [
        "netlink/tests/ipvs_kernel.rs",
        "netlink/tests/rtnetlink_kernel.rs",
    ]
    .into_iter()
    .flat_map(|source| {
        TestBinary::from_cargo(source)
            .and_then(|b| b.jobs())
            .unwrap_or_else(|e| panic!("{source}: {e}"))
    })
    .map(|job| job.env("SWITCHYARD_REQUIRE_VM_FEATURES", "1"))
    .collect()
}

/// The IPVS engine's kernel tests, required not to skip.
fn ipvs_engine_jobs() -> Vec<Job> {
    [
        "engines/ipvs/tests/kernel.rs",
        "engines/ipvs/tests/helper_kernel.rs",
    ]
    .into_iter()
    .flat_map(|source| {
        TestBinary::from_cargo(source)
            .and_then(|b| b.jobs())
            .unwrap_or_else(|e| panic!("{source}: {e}"))
    })
    .map(|job| job.env("SWITCHYARD_REQUIRE_VM_FEATURES", "1"))
    .collect()
}

/// One job of `test` per scenario file: the `defaults` (`None`: every file), or every
/// file matching the host's `env` variable (empty: all of them). One file per job keeps
/// each within its bound (all the files in one job take longer than that under TCG).
fn scenario_jobs(
    scenarios: &TestBinary,
    test: &str,
    env: &str,
    defaults: Option<&[&str]>,
) -> Vec<Job> {
    let all_files = |filter: &str| -> Vec<String> {
        let root = workspace_root();
        let mut files = scenario_files(&root.join("../shared/scenarios")).unwrap_or_default();
        files.extend(scenario_files(&root.join("e2e/scenarios")).unwrap_or_default());
        files
            .iter()
            .filter(|f| f.to_string_lossy().contains(filter))
            .filter_map(|f| f.file_name().map(|n| format!("/{}", n.to_string_lossy())))
            .collect()
    };
    let filters: Vec<String> = match (std::env::var(env), defaults) {
        (Ok(filter), _) => all_files(&filter),
        (Err(_), Some(defaults)) => defaults.iter().map(|s| s.to_string()).collect(),
        (Err(_), None) => all_files(""),
    };
    filters
        .into_iter()
        .map(|filter| {
            let mut job = scenarios
                .job(test)
                .env("SWITCHYARD_SCENARIO", &filter)
                .env("SWITCHYARD_REQUIRE_VM_FEATURES", "1");
            job.name = format!("{test}[{}]", filter.trim_start_matches('/'));
            job
        })
        .collect()
}

/// `scenarios_ipvs` per file (see [`scenario_jobs`]), then the stale UDP flow cleanup
/// and `switchyard explain` in ipvs mode.
fn ipvs_scenario_jobs(scenarios: &TestBinary) -> Vec<Job> {
    let mut jobs = scenario_jobs(
        scenarios,
        "scenarios_ipvs",
        "SWITCHYARD_VM_IPVS_SCENARIO",
        None,
    );
    let udp = TestBinary::from_cargo("e2e/tests/udp_conntrack.rs").expect("udp_conntrack");
    jobs.push(
        udp.job("udp_conntrack_ipvs")
            .env("SWITCHYARD_REQUIRE_VM_FEATURES", "1"),
    );
    let explain = TestBinary::from_cargo("e2e/tests/explain.rs").expect("explain");
    jobs.push(
        explain
            .job("explain_ipvs")
            .env("SWITCHYARD_REQUIRE_VM_FEATURES", "1"),
    );
    jobs
}

/// Fallback both ways: IPVS with the modules; then `ip_vs` unloaded and made
/// unloadable, nftables.
fn fallback_jobs() -> [Job; 2] {
    let binary = TestBinary::from_cargo("e2e/tests/ipvs_fallback.rs").expect("ipvs_fallback");
    let with = binary
        .job("with_the_modules_ipvs_runs_and_no_fallback_is_reported")
        .env("SWITCHYARD_REQUIRE_VM_FEATURES", "1");
    let test = "without_ip_vs_nftables_runs_and_the_fallback_names_the_module";
    let without = Job::new(format!("ipvs_fallback::{test}"), "/bin/sh")
        .args([
            "-c",
            "for i in $(seq 40); do \
               modprobe -r ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_wlc ip_vs_sh ip_vs_mh ip_vs \
               2>/dev/null && break; sleep 0.5; done; \
             [ ! -e /proc/sys/net/ipv4/vs ] || { echo 'ip_vs would not unload'; exit 99; }; \
             mkdir -p /run/modprobe.d && \
             echo 'install ip_vs /bin/false' > /run/modprobe.d/sy-no-ip-vs.conf && \
             exec \"$0\" \"$1\" --exact --test-threads=1 --nocapture",
            &binary.path.to_string_lossy(),
            test,
        ])
        .cwd(&binary.package_dir);
    [with, without]
}

/// The one boot every test here reads.
fn lane() -> &'static LaneRun {
    static RUN: OnceLock<LaneRun> = OnceLock::new();
    RUN.get_or_init(|| {
        let lane = VmLane::new()
            .expect("VM lane")
            .runner(env!("CARGO_BIN_EXE_vm-lane-runner"))
            .hang_grace(GRACE);
        let started = Instant::now();
        let (jobs, tests) = jobs();
        let report = lane.run(&jobs).expect("running the VM lane");
        let t = &report.timings;
        let jobs_total: Duration = report.jobs.iter().map(|j| j.duration).sum();
        let empty: Vec<Duration> = report
            .jobs
            .iter()
            .filter(|j| j.name.starts_with("empty-"))
            .map(|j| j.duration)
            .collect();
        eprintln!(
            "VM lane ({}): {} jobs; to runner {:?} (guest uptime {:?}), modules loaded at \
             {:?}, jobs {:.1?}, empty jobs {:?}, wall {:.1?} ({:.1?} with cargo locating the test binaries)",
            lane.kernel().release,
            jobs.len(),
            t.ready,
            t.uptime_at_ready,
            t.prepared,
            jobs_total,
            empty,
            t.wall,
            started.elapsed()
        );
        for job in &report.jobs {
            eprintln!("  {:<60} {:?} {:.1?}", job.name, job.exit, job.duration);
        }
        LaneRun { report, tests }
    })
}

/// The job's outcome; panics with the VM's status and console when it never finished.
fn finished(run: &LaneRun, name: &str) -> switchyard_e2e::vm::JobOutcome {
    let job = run
        .report
        .job(name)
        .unwrap_or_else(|| {
            panic!(
                "job {name} is not in the plan (SWITCHYARD_VM_ONLY={:?} left it out)",
                std::env::var("SWITCHYARD_VM_ONLY").unwrap_or_default()
            )
        })
        .clone();
    assert!(
        job.exit.is_some(),
        "{name} did not finish: {:?}\n{}",
        run.report.status,
        run.report.console_tail
    );
    job
}

#[test]
fn boots_and_loads_ipvs_and_br_netfilter() {
    if !require_root("boots_and_loads_ipvs_and_br_netfilter") {
        return;
    }
    let run = lane();
    let failed = run.report.failed_steps();
    assert!(failed.is_empty(), "preparation failed: {failed:#?}");
    let modules = finished(run, "modules");
    assert!(modules.success(), "{}", modules.summary());
    for module in [
        "ip_vs",
        "ip_vs_rr",
        "ip_vs_mh",
        "br_netfilter",
        "nf_conntrack",
    ] {
        assert!(
            modules
                .stdout
                .lines()
                .any(|l| l.split_whitespace().next() == Some(module)),
            "{module} not loaded:\n{}",
            modules.stdout
        );
    }
    for i in 0..3 {
        let empty = finished(run, &format!("empty-{i}"));
        assert!(empty.success(), "{}", empty.summary());
    }
}

#[test]
fn probe_finds_ipvs_in_the_vm_and_not_on_the_host() {
    if !require_root("probe_finds_ipvs_in_the_vm_and_not_on_the_host") {
        return;
    }
    let run = lane();
    let probe = finished(run, "probe");
    assert!(probe.success(), "{}", probe.summary());
    let in_vm = mode_report(&probe.stdout, "ipvs");
    assert_eq!(in_vm["available"], true, "{in_vm:#}");
    let family = in_vm["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "netlink family"))
        .unwrap_or_else(|| panic!("no netlink family check: {in_vm:#}"));
    assert_eq!(family["ok"], true, "{family:#}");
    let schedulers = in_vm["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "schedulers"))
        .unwrap_or_else(|| panic!("no schedulers check: {in_vm:#}"));
    let detail = schedulers["detail"].as_str().unwrap_or_default();
    for s in ["rr", "wrr", "lc", "wlc", "sh", "mh"] {
        assert!(
            detail.split_whitespace().any(|w| w == s),
            "scheduler {s} not named: {detail}"
        );
    }

    let out = std::process::Command::new(agent_binary().unwrap())
        .args(["probe", "--output", "json"])
        .output()
        .unwrap();
    let on_host = mode_report(&String::from_utf8_lossy(&out.stdout), "ipvs");
    assert_eq!(on_host["available"], false, "{on_host:#}");
    let missing: Vec<&str> = on_host["missing"]
        .as_array()
        .map(|m| m.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(missing.contains(&"ip_vs"), "{on_host:#}");
}

fn mode_report(probe_json: &str, mode: &str) -> Value {
    let report: Value = serde_json::from_str(probe_json)
        .unwrap_or_else(|e| panic!("probe JSON: {e}\n{probe_json}"));
    report["probe"]["modes"]
        .as_array()
        .and_then(|modes| modes.iter().find(|m| m["mode"] == mode))
        .cloned()
        .unwrap_or_else(|| panic!("no {mode} mode in {report}"))
}

#[test]
fn probe_names_nf_tables_not_loaded_but_loadable() {
    if !require_root("probe_names_nf_tables_not_loaded_but_loadable") {
        return;
    }
    let run = lane();
    let probe = finished(run, "probe-without-autoload");
    assert!(probe.success(), "{}", probe.summary());
    let nft = mode_report(&probe.stdout, "nftables");
    assert_eq!(nft["available"], false, "{nft:#}");
    assert_eq!(nft["notLoaded"][0]["module"], "nf_tables", "{nft:#}");
    assert_eq!(nft["missing"], serde_json::json!(["nf_tables"]), "{nft:#}");
    let usable: Value = serde_json::from_str(&probe.stdout).unwrap();
    let detail = usable["usable"]
        .as_array()
        .and_then(|u| u.iter().find(|m| m["mode"] == "nftables"))
        .map(|m| m["detail"].clone())
        .unwrap_or_default();
    assert_eq!(
        detail, "kernel module nf_tables not loaded but loadable (modprobe nf_tables)",
        "{usable:#}"
    );
}

#[test]
fn probe_warns_of_a_bridge_without_br_netfilter() {
    if !require_root("probe_warns_of_a_bridge_without_br_netfilter") {
        return;
    }
    let run = lane();
    let job = finished(run, "bridge-without-br-netfilter");
    assert!(job.success(), "{}", job.summary());
    let report: Value = serde_json::from_str(&job.stdout).unwrap();
    let warning = report["probe"]["warnings"][0].as_str().unwrap_or_default();
    assert!(
        warning.starts_with("bridge cbr0 present but kernel module br_netfilter is not loaded"),
        "{report:#}"
    );
    // With br_netfilter loaded (as in every other job), no warning.
    let probe = finished(run, "probe");
    let report: Value = serde_json::from_str(&probe.stdout).unwrap();
    assert!(report["probe"]["warnings"].is_null(), "{report:#}");
}

#[test]
fn probe_kernel_tests_pass_in_the_vm() {
    if !require_root("probe_kernel_tests_pass_in_the_vm") {
        return;
    }
    let run = lane();
    assert_tests_pass(run, &run.tests.probe);
    let listed = |name: &str| run.tests.probe.iter().any(|t| t.ends_with(name));
    assert!(listed("::loading_ipvs_modules_names_each_failure_and_why"));
    assert!(listed("::ipvs_report_fits_this_kernel"));
}

fn assert_tests_pass(run: &LaneRun, names: &[String]) {
    assert!(!names.is_empty());
    let failures: Vec<String> = names
        .iter()
        .filter_map(|name| match TestVerdict::of(&finished(run, name)) {
            TestVerdict::Passed => None,
            TestVerdict::Failed(why) => Some(why),
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn netlink_ipvs_and_dummy_link_tests_pass_in_the_vm() {
    if !require_root("netlink_ipvs_and_dummy_link_tests_pass_in_the_vm") {
        return;
    }
    let run = lane();
    assert_tests_pass(run, &run.tests.netlink);
    let listed = |name: &str| run.tests.netlink.iter().any(|t| t.ends_with(name));
    assert!(listed("::services_and_destinations_of_both_families"));
    assert!(listed("::dummy_link_lifecycle"));
    for name in &run.tests.netlink {
        let job = finished(run, name);
        assert!(
            !job.stdout.contains("*** SKIPPED"),
            "{name} skipped in the VM:\n{}",
            job.stdout
        );
    }
}

#[test]
fn sandbox_selftest_passes_in_the_vm() {
    if !require_root("sandbox_selftest_passes_in_the_vm") {
        return;
    }
    let run = lane();
    assert_tests_pass(run, &run.tests.selftests);
}

#[test]
fn nftables_scenarios_pass_in_the_vm() {
    if !require_root("nftables_scenarios_pass_in_the_vm") {
        return;
    }
    let run = lane();
    assert_tests_pass(run, &run.tests.scenarios);
}

#[test]
fn a_job_past_its_bound_is_killed_and_the_next_one_runs() {
    if !require_root("a_job_past_its_bound_is_killed_and_the_next_one_runs") {
        return;
    }
    let run = lane();
    let sleeper = finished(run, "sleeper");
    assert_eq!(
        sleeper.exit,
        Some(Exit::TimedOut(HANG_BOUND.as_millis() as u64))
    );
    assert!(sleeper.duration < HANG_BOUND + Duration::from_secs(2));
    assert!(
        sleeper
            .summary()
            .contains("job 'sleeper': killed at its 2000 ms bound"),
        "{}",
        sleeper.summary()
    );
    let after = finished(run, "after-sleeper");
    assert_eq!(after.stdout, "still here\n");
}

#[test]
fn a_hung_vm_is_killed_with_an_error_naming_the_job() {
    if !require_root("a_hung_vm_is_killed_with_an_error_naming_the_job") {
        return;
    }
    let run = lane();
    match &run.report.status {
        VmStatus::Hung { after, bound, .. } => {
            assert_eq!(*bound, HANG_BOUND + GRACE);
            assert!(*after < *bound + Duration::from_secs(2), "{after:?}");
        }
        other => panic!("expected the VM to be killed, got {other:?}"),
    }
    let err = run.report.vm_result().unwrap_err();
    assert!(matches!(err, VmError::Hung { .. }));
    let text = err.to_string();
    assert!(text.contains("hung in job 'vm-hang'"), "{text}");
    assert!(text.contains("vm-hang started"), "console tail: {text}");
    assert!(run.report.job("vm-hang").unwrap().exit.is_none());
}

#[test]
fn ipvs_engine_kernel_tests_pass_in_the_vm() {
    if !require_root("ipvs_engine_kernel_tests_pass_in_the_vm") {
        return;
    }
    let run = lane();
    assert_tests_pass(run, &run.tests.ipvs_engine);
    let listed = |name: &str| run.tests.ipvs_engine.iter().any(|t| t.ends_with(name));
    assert!(listed("::one_endpoint_change_is_one_ipvs_operation"));
    assert!(listed("::ipvsadm_reads_as_an_operator_expects"));
    for name in &run.tests.ipvs_engine {
        let job = finished(run, name);
        assert!(
            !job.stdout.contains("SKIPPED") && !job.stderr.contains("SKIPPED"),
            "{name} skipped in the VM:\n{}{}",
            job.stdout,
            job.stderr
        );
    }
}

#[test]
fn ipvs_scenarios_pass_in_the_vm() {
    if !require_root("ipvs_scenarios_pass_in_the_vm") {
        return;
    }
    let run = lane();
    assert_tests_pass(run, &run.tests.ipvs_scenarios);
}

#[test]
fn ipvs_falls_back_to_nftables_only_without_ip_vs_in_the_vm() {
    if !require_root("ipvs_falls_back_to_nftables_only_without_ip_vs_in_the_vm") {
        return;
    }
    let run = lane();
    assert_tests_pass(run, &run.tests.fallback);
    for name in &run.tests.fallback {
        let job = finished(run, name);
        assert!(
            !job.stderr.contains("SKIPPED"),
            "{name} skipped in the VM:\n{}",
            job.stderr
        );
    }
}

#[test]
fn conntrack_pressure_is_reported_in_the_vm() {
    if !require_root("conntrack_pressure_is_reported_in_the_vm") {
        return;
    }
    let run = lane();
    let name = &run.tests.conntrack;
    assert_tests_pass(run, std::slice::from_ref(name));
    let job = finished(run, name);
    assert!(
        !job.stderr.contains("SKIPPED"),
        "{name} skipped in the VM:\n{}",
        job.stderr
    );
}

#[test]
fn ipvs_fault_injection_passes_in_the_vm() {
    if !require_root("ipvs_fault_injection_passes_in_the_vm") {
        return;
    }
    let run = lane();
    let names = &run.tests.ipvs_faults;
    assert_eq!(names.len(), IPVS_FAULT_TESTS.len());
    for name in names {
        let job = finished(run, name);
        // The measured figures (RELIABILITY.md): each test's summary lines.
        // libtest prints the first line after `test NAME ... `.
        let lines = job.stdout.lines().map(|l| match l.split_once(" ... ") {
            Some((test, rest)) if test.starts_with("test ") => rest,
            _ => l,
        });
        for line in lines.filter(|l| l.contains("ipvs")) {
            eprintln!("{name}: {line}");
        }
        assert!(
            !job.stderr.contains("SKIPPED"),
            "{name} skipped in the VM:\n{}",
            job.stderr
        );
        if !job.success() {
            // The error and the agent's log come first; the summary's tail is the trace.
            let error: Vec<&str> = job
                .stderr
                .lines()
                .take_while(|l| !l.starts_with("Stack backtrace:"))
                .collect();
            eprintln!("{name} failed:\n{}", error.join("\n"));
        }
    }
    assert_tests_pass(run, names);
}
