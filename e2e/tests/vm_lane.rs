//! The qemu VM lane (`switchyard_e2e::vm`), proven with the project's own tests: one boot
//! of Debian's kernel runs, in order,
//! - `switchyard probe --output json` (IPVS available in the VM, missing on the host),
//! - `/proc/modules` and three empty jobs (per-job overhead),
//! - every test of `tests/sandbox_selftest.rs` and the nftables scenarios of
//!   `tests/scenarios.rs`, unchanged, one job per test,
//! - a job that outlives its 2 s bound (the runner kills it; the next job still runs),
//! - a job that stops the runner itself, so the VM no longer answers: the host kills qemu
//!   at the job's bound plus the lane's grace, with an error naming the job.
//!
//! Each `#[test]` checks its part of that one boot (booting costs ~10 s under TCG; the
//! whole lane takes 1.5 to 2 minutes). Needs root; skips loudly without it, fails under
//! `CI=true`. `SWITCHYARD_VM_SCENARIO` chooses the scenario files (see
//! [`DEFAULT_SCENARIO`]).

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use serde_json::Value;
use switchyard_e2e::{
    agent::agent_binary,
    require_root,
    vm::{Exit, Job, TestBinary, TestVerdict, VmError, VmLane, VmReport, VmStatus},
};

/// The scenario file run in the VM by default: the shared ClusterIP scenario. All fifteen
/// files take ~5 minutes under TCG (28 s on the host), so they are opt-in
/// (`SWITCHYARD_VM_SCENARIO=` — empty matches every file).
const DEFAULT_SCENARIO: &str = "cluster-ip-general";
const HANG_BOUND: Duration = Duration::from_secs(2);
const GRACE: Duration = Duration::from_secs(5);

struct LaneRun {
    report: VmReport,
    /// The test jobs, by binary.
    selftests: Vec<String>,
    scenarios: Vec<String>,
}

fn jobs() -> (Vec<Job>, Vec<String>, Vec<String>) {
    let agent = agent_binary().expect("switchyard binary");
    let mut jobs = vec![
        Job::new("probe", &agent).args(["probe", "--output", "json"]),
        Job::new("modules", "/bin/cat").arg("/proc/modules"),
    ];
    for i in 0..3 {
        jobs.push(Job::new(format!("empty-{i}"), "/bin/true"));
    }
    let selftest = TestBinary::from_cargo("sandbox_selftest").expect("sandbox_selftest");
    let selftests = selftest.jobs().expect("listing sandbox_selftest");
    let scenarios = TestBinary::from_cargo("scenarios").expect("scenarios");
    let filter =
        std::env::var("SWITCHYARD_VM_SCENARIO").unwrap_or_else(|_| DEFAULT_SCENARIO.into());
    let scenario_job = scenarios
        .job("scenarios_nftables")
        .env("SWITCHYARD_SCENARIO", filter);
    let names = |js: &[Job]| js.iter().map(|j| j.name.clone()).collect::<Vec<_>>();
    let (selftest_names, scenario_names) = (names(&selftests), names(&[scenario_job.clone()]));
    jobs.extend(selftests);
    jobs.push(scenario_job);
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
    (jobs, selftest_names, scenario_names)
}

/// The one boot every test here reads.
fn lane() -> &'static LaneRun {
    static RUN: OnceLock<LaneRun> = OnceLock::new();
    RUN.get_or_init(|| {
        let lane = VmLane::new()
            .expect("VM lane")
            .runner(env!("CARGO_BIN_EXE_vm-lane-runner"))
            .hang_grace(GRACE);
        let (jobs, selftests, scenarios) = jobs();
        let started = Instant::now();
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
             {:?}, jobs {:.1?}, empty jobs {:?}, wall {:.1?} ({:.1?} with the host's setup)",
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
        LaneRun {
            report,
            selftests,
            scenarios,
        }
    })
}

/// The job's outcome; panics with the VM's status and console when it never finished.
fn finished(run: &LaneRun, name: &str) -> switchyard_e2e::vm::JobOutcome {
    let job = run.report.job(name).expect("job in the plan").clone();
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

fn ipvs_report(probe_json: &str) -> Value {
    let report: Value = serde_json::from_str(probe_json)
        .unwrap_or_else(|e| panic!("probe JSON: {e}\n{probe_json}"));
    report["probe"]["modes"]
        .as_array()
        .and_then(|modes| modes.iter().find(|m| m["mode"] == "ipvs"))
        .cloned()
        .unwrap_or_else(|| panic!("no ipvs mode in {report}"))
}

#[test]
fn probe_finds_ipvs_in_the_vm_and_not_on_the_host() {
    if !require_root("probe_finds_ipvs_in_the_vm_and_not_on_the_host") {
        return;
    }
    let run = lane();
    let probe = finished(run, "probe");
    assert!(probe.success(), "{}", probe.summary());
    let in_vm = ipvs_report(&probe.stdout);
    assert_eq!(in_vm["available"], true, "{in_vm:#}");
    let family = in_vm["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "netlink family"))
        .unwrap_or_else(|| panic!("no netlink family check: {in_vm:#}"));
    assert_eq!(family["ok"], true, "{family:#}");

    let out = std::process::Command::new(agent_binary().unwrap())
        .args(["probe", "--output", "json"])
        .output()
        .unwrap();
    let on_host = ipvs_report(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(on_host["available"], false, "{on_host:#}");
    let missing: Vec<&str> = on_host["missing"]
        .as_array()
        .map(|m| m.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(missing.contains(&"ip_vs"), "{on_host:#}");
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
fn sandbox_selftest_passes_in_the_vm() {
    if !require_root("sandbox_selftest_passes_in_the_vm") {
        return;
    }
    let run = lane();
    assert_tests_pass(run, &run.selftests);
}

#[test]
fn nftables_scenarios_pass_in_the_vm() {
    if !require_root("nftables_scenarios_pass_in_the_vm") {
        return;
    }
    let run = lane();
    assert_tests_pass(run, &run.scenarios);
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
