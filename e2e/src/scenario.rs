//! Packet-flow scenarios (format: `../shared/scenarios/README.md`): parsing a scenario
//! file, building its sandbox and manifests, running the real agent on them, playing every
//! flow with real traffic, and the report (flow, expected, got, PASS / FAIL / PENDING).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use crate::{
    manifests::{file_name_for, node_object, proxy_config, ManifestDir},
    probe::{Outcome, Proto, PROBE_TIMEOUT},
    sandbox::Sandbox,
};

/// Most tries for a flow expecting backends.
const MAX_TRIES: usize = 40;
/// Fewest tries before a flow expecting backends may stop (once all were seen).
const MIN_TRIES: usize = 8;
/// Tries for a flow with `expect_one_of` (all must be answered from the set).
const ONE_OF_TRIES: usize = 16;
/// Tries for `REJECT` (ICMP may be rate-limited) and for `DROP` / `BLOCKED` (each costs a
/// timeout).
const REJECT_TRIES: usize = 3;
const DROP_TRIES: usize = 2;
/// How long the agent may take to become healthy (its start, probe included, and first
/// sync): 20 s, or 120 s in the VM lane, where the probe alone takes 10-13 s under TCG
/// and loading the IPVS modules more.
fn healthy_timeout() -> Duration {
    if std::env::var_os(crate::vm::IN_VM_VAR).is_some() {
        Duration::from_secs(120)
    } else {
        Duration::from_secs(20)
    }
}

/// One scenario file.
#[derive(Clone, Debug, Deserialize)]
pub struct Scenario {
    pub name: String,
    /// ProxyConfig spec overrides.
    #[serde(default, deserialize_with = "null_as_default")]
    pub config: Mapping,
    /// Kubernetes objects (Services, EndpointSlices, ...).
    #[serde(default)]
    pub objects: Vec<Value>,
    #[serde(default)]
    pub flows: Vec<Flow>,
}

fn null_as_default<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Mapping, D::Error> {
    Ok(Option::<Mapping>::deserialize(d)?.unwrap_or_default())
}

/// One flow of traffic and what must become of it.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "RawFlow")]
pub struct Flow {
    pub name: String,
    /// A source role (`pod`, `node`, `ext`, `extblocked`, `pod6`, `node6`, `ext6`) or an
    /// endpoint IP (hairpin).
    pub src: String,
    /// `ip:port` or `[ip6]:port`.
    pub dst: String,
    #[serde(default = "default_proto")]
    pub proto: String,
    pub expect: Expect,
    /// Whether the backend must see a source other than the client's.
    #[serde(default)]
    pub masq: Option<bool>,
    /// Marks the flow pending in the file itself (`true` or a reason).
    #[serde(default)]
    pub pending: Option<Value>,
    /// With `expect_one_of`: every try must be answered by the same single backend (session
    /// affinity).
    #[serde(default)]
    pub sticky: bool,
    /// Expectations that differ in one mode (by mode name), each with its reason.
    #[serde(default)]
    pub by_mode: BTreeMap<String, ModeExpectation>,
}

/// What a flow must produce in one mode where that differs from the other engines, for a
/// legitimate reason given in `why` (the eBPF engine's socket-level load balancing NATs
/// nothing; Cilium's documented behaviour is the reference).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ModeExpectation {
    #[serde(default)]
    pub expect: Option<Expect>,
    #[serde(default)]
    pub masq: Option<bool>,
    pub why: String,
}

impl Flow {
    /// The flow as `mode` plays it, and the reason when that differs.
    pub fn in_mode(&self, mode: &str) -> (Flow, Option<String>) {
        let Some(m) = self.by_mode.get(mode) else {
            return (self.clone(), None);
        };
        let mut flow = self.clone();
        if let Some(e) = &m.expect {
            flow.expect = e.clone();
        }
        if m.masq.is_some() {
            flow.masq = m.masq;
        }
        (flow, Some(m.why.clone()))
    }
}

/// A flow as written: `expect` (a backend list or a word) or `expect_one_of` (a backend
/// list; every answer must come from it) with optional `sticky`.
#[derive(Deserialize)]
struct RawFlow {
    name: String,
    src: String,
    dst: String,
    #[serde(default = "default_proto")]
    proto: String,
    #[serde(default)]
    expect: Option<Expect>,
    #[serde(default)]
    expect_one_of: Option<Vec<String>>,
    #[serde(default)]
    sticky: bool,
    #[serde(default)]
    masq: Option<bool>,
    #[serde(default)]
    pending: Option<Value>,
    #[serde(default)]
    by_mode: BTreeMap<String, ModeExpectation>,
}

impl TryFrom<RawFlow> for Flow {
    type Error = String;
    fn try_from(r: RawFlow) -> Result<Flow, String> {
        let expect = match (r.expect, r.expect_one_of) {
            (Some(e), None) => {
                if r.sticky {
                    return Err(format!("flow {:?}: sticky needs expect_one_of", r.name));
                }
                e
            }
            (None, Some(list)) => {
                let set = list
                    .iter()
                    .map(|s| {
                        s.parse::<SocketAddr>()
                            .map(|a| a.to_string())
                            .map_err(|_| format!("flow {:?}: bad backend {s:?}", r.name))
                    })
                    .collect::<Result<BTreeSet<_>, _>>()?;
                if set.is_empty() {
                    return Err(format!("flow {:?}: expect_one_of is empty", r.name));
                }
                Expect::OneOf(set)
            }
            (Some(_), Some(_)) => {
                return Err(format!(
                    "flow {:?}: give either expect or expect_one_of, not both",
                    r.name
                ))
            }
            (None, None) => return Err(format!("flow {:?}: expect is missing", r.name)),
        };
        Ok(Flow {
            name: r.name,
            src: r.src,
            dst: r.dst,
            proto: r.proto,
            expect,
            masq: r.masq,
            pending: r.pending,
            sticky: r.sticky,
            by_mode: r.by_mode,
        })
    }
}

fn default_proto() -> String {
    "tcp".into()
}

/// What a flow must produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Exactly this set of backends (`ip:port`, normalised) answers.
    Backends(BTreeSet<String>),
    /// Refused on every try.
    Reject,
    /// Timed out on every try.
    Drop,
    /// Refused or timed out on every try.
    Blocked,
    /// Every try answered, each by a backend of this set (not necessarily all of them);
    /// with the flow's `sticky`, all by the same one.
    OneOf(BTreeSet<String>),
}

impl<'de> Deserialize<'de> for Expect {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Expect, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            List(Vec<String>),
            Word(String),
        }
        match Raw::deserialize(d)? {
            Raw::Word(w) => match w.to_ascii_uppercase().as_str() {
                "REJECT" => Ok(Expect::Reject),
                "DROP" => Ok(Expect::Drop),
                "BLOCKED" => Ok(Expect::Blocked),
                other => Err(serde::de::Error::custom(format!(
                    "expect must be a list of ip:port, REJECT, DROP or BLOCKED, not {other:?}"
                ))),
            },
            Raw::List(items) => items
                .iter()
                .map(|s| {
                    s.parse::<SocketAddr>()
                        .map(|a| a.to_string())
                        .map_err(|_| serde::de::Error::custom(format!("bad backend {s:?}")))
                })
                .collect::<Result<_, _>>()
                .map(Expect::Backends),
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Backends(b) => {
                write!(f, "{}", b.iter().cloned().collect::<Vec<_>>().join(" "))
            }
            Expect::Reject => f.write_str("REJECT"),
            Expect::Drop => f.write_str("DROP"),
            Expect::Blocked => f.write_str("BLOCKED"),
            Expect::OneOf(b) => write!(
                f,
                "one of {}",
                b.iter().cloned().collect::<Vec<_>>().join(" ")
            ),
        }
    }
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_yaml::from_str(&text).with_context(|| format!("parsing scenario {}", path.display()))
    }

    /// Every endpoint IP of the EndpointSlices with the ports of the slices it appears in.
    pub fn endpoint_pods(&self) -> BTreeMap<IpAddr, BTreeSet<u16>> {
        let mut pods: BTreeMap<IpAddr, BTreeSet<u16>> = BTreeMap::new();
        for slice in self
            .objects
            .iter()
            .filter(|o| o["kind"].as_str() == Some("EndpointSlice"))
        {
            let ports: Vec<u16> = slice["ports"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|p| p["port"].as_u64())
                .filter_map(|p| u16::try_from(p).ok())
                .collect();
            for ep in slice["endpoints"].as_sequence().into_iter().flatten() {
                for addr in ep["addresses"].as_sequence().into_iter().flatten() {
                    if let Some(ip) = addr.as_str().and_then(|a| a.parse::<IpAddr>().ok()) {
                        pods.entry(ip).or_default().extend(ports.iter().copied());
                    }
                }
            }
        }
        pods
    }
}

/// The `*.yaml` / `*.yml` files of a directory, sorted.
pub fn scenario_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading scenario directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    Ok(files)
}

/// Plays scenarios against the real agent in a fresh sandbox each.
#[derive(Clone, Debug)]
pub struct Runner {
    mode: String,
    pending: BTreeSet<String>,
    agent_args: Vec<String>,
}

impl Runner {
    /// A runner whose ProxyConfig asks for `mode` (`nftables`, `iptables`, ...).
    pub fn new(mode: &str) -> Runner {
        Runner {
            mode: mode.to_string(),
            pending: BTreeSet::new(),
            agent_args: Vec::new(),
        }
    }

    /// Flows expected to fail for now, by flow name or `scenario/flow`. They are reported
    /// as PENDING (or PENDING-PASSES if they unexpectedly pass), never silently skipped.
    pub fn pending<I, S>(mut self, flows: I) -> Runner
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.pending.extend(flows.into_iter().map(Into::into));
        self
    }

    /// Extra arguments for `switchyard run`.
    pub fn agent_args<I, S>(mut self, args: I) -> Runner
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.agent_args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn mode(&self) -> &str {
        &self.mode
    }

    /// Loads and runs one scenario file, prints its report, and fails listing every failed
    /// flow.
    pub fn run_file(&self, path: &Path) -> Result<ScenarioReport> {
        let scenario = Scenario::load(path)?;
        let report = self
            .run(&scenario)
            .with_context(|| format!("scenario {} ({})", scenario.name, path.display()))?;
        println!("{report}");
        report.check()?;
        Ok(report)
    }

    /// Builds the sandbox and manifests, starts the agent, plays every flow. Errors are
    /// harness or agent-startup failures; flow failures are in the report.
    pub fn run(&self, scenario: &Scenario) -> Result<ScenarioReport> {
        let overlay = ModeOverlay::load(&self.mode)?;
        let mut sandbox = Sandbox::new()?;
        for (ip, ports) in scenario.endpoint_pods() {
            let ports: Vec<u16> = ports.into_iter().collect();
            sandbox
                .add_pod(&[ip], &ports)
                .with_context(|| format!("adding endpoint pod {ip}"))?;
        }
        let mut config = scenario.config.clone();
        let mut args = self.agent_args.clone();
        if self.mode == "ebpf" {
            // The socket programs attach to a private cgroup holding the sandbox's
            // clients, the pins go to a private bpffs: never the host's.
            let paths = sandbox.enable_ebpf()?;
            let mut block = config
                .get("ebpf")
                .and_then(Value::as_mapping)
                .cloned()
                .unwrap_or_default();
            block.insert(
                "cgroupPath".into(),
                paths.cgroup.to_string_lossy().into_owned().into(),
            );
            config.insert("ebpf".into(), Value::Mapping(block));
            args.push("--bpffs-root".into());
            args.push(paths.bpffs.to_string_lossy().into_owned());
        }
        let manifests = write_manifests(scenario, &self.mode, &config)?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sandbox.run_agent(manifests.path(), &args)?;
        match config.get("healthzBindAddress").and_then(Value::as_str) {
            Some(addr) => {
                let addr = addr
                    .parse()
                    .with_context(|| format!("healthzBindAddress {addr:?}"))?;
                sandbox.wait_healthy_at(addr, healthy_timeout())?;
            }
            None => sandbox.wait_healthy(healthy_timeout())?,
        }

        let mut flows = Vec::new();
        for flow in &scenario.flows {
            let mut flow = flow.clone();
            if let Some(m) = overlay.get(&scenario.name, &flow.name) {
                flow.by_mode.insert(self.mode.clone(), m.clone());
            }
            flows.push(self.play_flow(&sandbox, &scenario.name, &flow));
        }
        if self.mode == "ebpf" {
            flows.push(no_netfilter_of_ours(&sandbox));
        }
        if self.mode == "iptables" {
            flows.push(iptables_rule_metrics(&sandbox));
        }
        let mut report = ScenarioReport {
            scenario: scenario.name.clone(),
            mode: self.mode.clone(),
            flows,
            diagnostics: String::new(),
        };
        add_diagnostics(&mut sandbox, &mut report);
        Ok(report)
    }

    fn play_flow(&self, sandbox: &Sandbox, scenario: &str, flow: &Flow) -> FlowResult {
        let (flow, differs) = flow.in_mode(&self.mode);
        let pending = flow
            .pending
            .as_ref()
            .is_some_and(|p| p != &Value::Bool(false))
            || self.pending.contains(&flow.name)
            || self.pending.contains(&format!("{scenario}/{}", flow.name));
        let (passed, got) = match play(sandbox, &flow) {
            Ok(p) => p,
            Err(e) => (false, format!("harness error: {e:#}")),
        };
        let status = match (pending, passed) {
            (false, true) => Status::Pass,
            (false, false) => Status::Fail,
            (true, false) => Status::Pending,
            (true, true) => Status::PendingPasses,
        };
        let sticky = if flow.sticky { " sticky" } else { "" };
        let mut expected = match flow.masq {
            Some(m) => format!("{}{sticky} masq={m}", flow.expect),
            None => format!("{}{sticky}", flow.expect),
        };
        if differs.is_some() {
            expected.push_str(&format!(" [{}]", self.mode));
        }
        FlowResult {
            name: flow.name.clone(),
            src: flow.src.clone(),
            dst: flow.dst.clone(),
            proto: flow.proto.clone(),
            expected,
            got,
            status,
            mode_note: differs,
        }
    }
}

/// The manifests directory of a scenario: the Node, the ProxyConfig (`mode` with
/// `config` over the defaults) and the scenario's objects.
fn write_manifests(scenario: &Scenario, mode: &str, config: &Mapping) -> Result<ManifestDir> {
    let manifests = ManifestDir::new_temp("manifests")?;
    manifests.write(&node_object())?;
    manifests.write(&proxy_config(mode, config))?;
    let mut used = BTreeSet::new();
    for (i, object) in scenario.objects.iter().enumerate() {
        let mut name = file_name_for(object);
        if !used.insert(name.clone()) {
            name = format!("{i}-{name}");
            used.insert(name.clone());
        }
        manifests.write_object(&name, object)?;
    }
    Ok(manifests)
}

/// Agent log and ruleset when a flow failed or the agent exited; an exited agent is a
/// failure of its own.
fn add_diagnostics(sandbox: &mut Sandbox, report: &mut ScenarioReport) {
    let mut agent_running = true;
    if let Ok(agent) = sandbox.agent_mut() {
        agent_running = agent.is_running();
    }
    if agent_running && !report.flows.iter().any(|f| f.status == Status::Fail) {
        return;
    }
    report.diagnostics = format!(
        "agent {}; its log:\n{}\nnode ruleset:\n{}",
        if agent_running {
            "still running"
        } else {
            "EXITED"
        },
        tail(&sandbox.agent_log(), 60),
        sandbox.node_ruleset()
    );
    if !agent_running {
        report.flows.push(FlowResult {
            name: "(agent still running at the end)".into(),
            src: String::new(),
            dst: String::new(),
            proto: String::new(),
            expected: "running".into(),
            got: "exited".into(),
            status: Status::Fail,
            mode_note: None,
        });
    }
}

/// Issue 11 item 4: while the eBPF engine serves the node, no nft table and no iptables
/// chain of ours exists in its namespace (`switchyard*` tables, `SY-` chains).
fn no_netfilter_of_ours(sandbox: &Sandbox) -> FlowResult {
    let mut found = Vec::new();
    for cmd in [
        &["nft", "list", "ruleset"][..],
        &["iptables-legacy-save"],
        &["ip6tables-legacy-save"],
    ] {
        let text = sandbox.in_node(cmd).unwrap_or_default();
        for line in text.lines() {
            let l = line.trim();
            if (l.starts_with("table") && l.contains("switchyard"))
                || l.starts_with(":SY-")
                || l.starts_with("chain SY-")
            {
                found.push(l.to_string());
            }
        }
    }
    FlowResult {
        name: "(no nft table or iptables chain of ours while ebpf is active)".into(),
        src: String::new(),
        dst: String::new(),
        proto: String::new(),
        expected: "none".into(),
        got: if found.is_empty() {
            "none".into()
        } else {
            found.join(", ")
        },
        status: if found.is_empty() {
            Status::Pass
        } else {
            Status::Fail
        },
        mode_note: None,
    }
}

/// Per-mode expectations for flows of scenario files this repository does not own
/// (`../shared/scenarios` is read-only here): `e2e/engine-expectations/<mode>.yaml`.
/// Our own files state them inline (`by_mode`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModeOverlay {
    pub mode: String,
    /// Where the expected behaviour is documented.
    #[serde(default)]
    pub reference: String,
    #[serde(default)]
    pub flows: Vec<OverlayFlow>,
}

/// One flow's expectation in an overlay.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlayFlow {
    pub scenario: String,
    pub flow: String,
    #[serde(default)]
    pub expect: Option<Expect>,
    #[serde(default)]
    pub masq: Option<bool>,
    pub why: String,
}

impl ModeOverlay {
    pub fn path(mode: &str) -> PathBuf {
        crate::agent::workspace_root()
            .join("e2e/engine-expectations")
            .join(format!("{mode}.yaml"))
    }

    /// The overlay of `mode`, empty when it has none.
    pub fn load(mode: &str) -> Result<ModeOverlay> {
        let path = ModeOverlay::path(mode);
        if !path.exists() {
            return Ok(ModeOverlay::default());
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let overlay: ModeOverlay =
            serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if overlay.mode != mode {
            bail!(
                "{}: mode {:?}, expected {mode:?}",
                path.display(),
                overlay.mode
            );
        }
        Ok(overlay)
    }

    pub fn get(&self, scenario: &str, flow: &str) -> Option<ModeExpectation> {
        self.flows
            .iter()
            .find(|f| f.scenario == scenario && f.flow == flow)
            .map(|f| ModeExpectation {
                expect: f.expect.clone(),
                masq: f.masq,
                why: f.why.clone(),
            })
    }
}

/// iptables mode reports the rules it programmed per table on `/metrics`
/// (`kubeproxy_sync_proxy_rules_iptables_total{table}`, as upstream): a pseudo-flow that
/// passes when both tables show a non-zero count.
fn iptables_rule_metrics(sandbox: &Sandbox) -> FlowResult {
    let text = sandbox
        .metrics()
        .unwrap_or_else(|e| format!("error: {e:#}"));
    let count = |table: &str| -> Option<f64> {
        let prefix = format!("kubeproxy_sync_proxy_rules_iptables_total{{table=\"{table}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
    };
    let (nat, filter) = (count("nat"), count("filter"));
    let passed = nat.is_some_and(|n| n > 0.0) && filter.is_some_and(|n| n > 0.0);
    FlowResult {
        name: "(iptables rule counts on /metrics)".into(),
        src: String::new(),
        dst: "/metrics".into(),
        proto: String::new(),
        expected: "nat > 0, filter > 0".into(),
        got: format!("nat {nat:?}, filter {filter:?}"),
        status: if passed { Status::Pass } else { Status::Fail },
        mode_note: None,
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Plays one flow: (passed, what was seen).
fn play(sandbox: &Sandbox, flow: &Flow) -> Result<(bool, String)> {
    let dst: SocketAddr = flow
        .dst
        .parse()
        .with_context(|| format!("bad dst {:?}", flow.dst))?;
    let proto: Proto = flow.proto.parse()?;
    let src = sandbox.source(&flow.src)?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut masq_wrong = 0usize;
    let mut answers = 0usize;
    let mut failures = 0usize;
    let mut tries = 0usize;
    let limit = match flow.expect {
        Expect::Backends(_) => MAX_TRIES,
        Expect::OneOf(_) => ONE_OF_TRIES,
        Expect::Reject => REJECT_TRIES,
        Expect::Drop | Expect::Blocked => DROP_TRIES,
    };
    while tries < limit {
        tries += 1;
        // Through the sandbox: with a private cgroup, the node's own clients probe from
        // its client process (socket programs only see the cgroup's sockets).
        let outcome = sandbox.probe(&flow.src, dst, proto, PROBE_TIMEOUT)?;
        let key = match &outcome {
            Outcome::Answered {
                backend,
                seen_source,
            } => {
                answers += 1;
                if let Some(m) = flow.masq {
                    if (seen_source.ip() != src.ip) != m {
                        masq_wrong += 1;
                    }
                }
                backend.clone()
            }
            Outcome::Refused(_) => {
                failures += 1;
                "REFUSED".into()
            }
            Outcome::Timeout => {
                failures += 1;
                "TIMEOUT".into()
            }
        };
        *counts.entry(key).or_default() += 1;
        if matches!(flow.expect, Expect::OneOf(_)) && failures >= 3 {
            break;
        }
        if let Expect::Backends(expected) = &flow.expect {
            if failures >= 3 {
                break;
            }
            if tries >= MIN_TRIES && expected.iter().all(|b| counts.contains_key(b)) {
                break;
            }
        }
    }
    let mut got = counts
        .iter()
        .map(|(k, n)| format!("{k} x{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    if masq_wrong > 0 {
        got.push_str(&format!(
            "; {masq_wrong}/{answers} answers saw {} source",
            if flow.masq == Some(true) {
                "the client's own (not masqueraded)"
            } else {
                "a masqueraded"
            }
        ));
    }
    let only = |keys: &[&str]| counts.keys().all(|k| keys.contains(&k.as_str()));
    let passed = match &flow.expect {
        Expect::Backends(expected) => {
            failures == 0
                && masq_wrong == 0
                && counts.keys().cloned().collect::<BTreeSet<_>>() == *expected
        }
        Expect::OneOf(allowed) => {
            failures == 0
                && masq_wrong == 0
                && !counts.is_empty()
                && counts.keys().all(|k| allowed.contains(k))
                && (!flow.sticky || counts.len() == 1)
        }
        Expect::Reject => only(&["REFUSED"]),
        Expect::Drop => only(&["TIMEOUT"]),
        Expect::Blocked => only(&["REFUSED", "TIMEOUT"]),
    };
    Ok((passed, got))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    /// Expected to fail for now, and did.
    Pending,
    /// Marked pending but passed: time to remove it from the pending list.
    PendingPasses,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Pending => "PENDING",
            Status::PendingPasses => "PENDING-PASSES",
        })
    }
}

/// One flow's result.
#[derive(Clone, Debug)]
pub struct FlowResult {
    pub name: String,
    pub src: String,
    pub dst: String,
    pub proto: String,
    pub expected: String,
    pub got: String,
    pub status: Status,
    /// Why this mode expects something else than the other engines.
    pub mode_note: Option<String>,
}

/// The result of one scenario; `Display` renders an aligned table.
#[derive(Clone, Debug)]
pub struct ScenarioReport {
    pub scenario: String,
    pub mode: String,
    pub flows: Vec<FlowResult>,
    /// Agent log tail and node ruleset, filled when something failed.
    pub diagnostics: String,
}

impl ScenarioReport {
    pub fn count(&self, status: Status) -> usize {
        self.flows.iter().filter(|f| f.status == status).count()
    }

    pub fn failed(&self) -> Vec<&FlowResult> {
        self.flows
            .iter()
            .filter(|f| f.status == Status::Fail)
            .collect()
    }

    /// Ok if no flow failed (pending flows do not fail the scenario); otherwise an error
    /// naming every failed flow.
    pub fn check(&self) -> Result<()> {
        let failed = self.failed();
        if failed.is_empty() {
            return Ok(());
        }
        let lines: Vec<String> = failed
            .iter()
            .map(|f| {
                format!(
                    "  {}/{}: {} -> {} {}: expected {}, got {}",
                    self.scenario, f.name, f.src, f.dst, f.proto, f.expected, f.got
                )
            })
            .collect();
        bail!(
            "{} flow(s) failed in scenario {} ({}):\n{}",
            failed.len(),
            self.scenario,
            self.mode,
            lines.join("\n")
        )
    }
}

impl fmt::Display for ScenarioReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "=== scenario {} (mode {}): {} passed, {} failed, {} pending, {} pending-but-passing",
            self.scenario,
            self.mode,
            self.count(Status::Pass),
            self.count(Status::Fail),
            self.count(Status::Pending),
            self.count(Status::PendingPasses)
        )?;
        let header = ["RESULT", "FLOW", "SRC", "DST", "PROTO", "EXPECTED", "GOT"];
        let rows: Vec<[String; 7]> = self
            .flows
            .iter()
            .map(|r| {
                [
                    r.status.to_string(),
                    r.name.clone(),
                    r.src.clone(),
                    r.dst.clone(),
                    r.proto.clone(),
                    r.expected.clone(),
                    r.got.clone(),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            cells
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        writeln!(f, "  {}", line(&header.map(String::from)))?;
        for row in &rows {
            writeln!(f, "  {}", line(row))?;
        }
        for r in &self.flows {
            if let Some(why) = &r.mode_note {
                writeln!(f, "  {} differs in {}: {why}", r.name, self.mode)?;
            }
        }
        for r in self
            .flows
            .iter()
            .filter(|r| r.status == Status::PendingPasses)
        {
            writeln!(
                f,
                "  note: pending flow {:?} passes now; remove it from the pending list",
                r.name
            )?;
        }
        if !self.diagnostics.is_empty() {
            writeln!(
                f,
                "--- diagnostics for {}:\n{}",
                self.scenario, self.diagnostics
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flows_and_endpoint_pods() {
        let s: Scenario = serde_yaml::from_str(
            r#"
name: t
config: {}
objects:
- kind: EndpointSlice
  endpoints:
  - addresses: [10.180.0.1]
  - addresses: ["fd00:10::5"]
  ports: [{port: 80}, {port: 53}]
flows:
- {name: a, src: pod, dst: '172.30.0.41:80', expect: ['10.180.0.1:80'], proto: tcp, masq: false}
- {name: b, src: pod, dst: '172.30.0.41:81', expect: REJECT}
- {name: c, src: pod6, dst: '[fd00:172::1]:80', expect: ['[fd00:10:0::5]:80'], proto: udp}
"#,
        )
        .unwrap();
        assert_eq!(s.flows.len(), 3);
        assert_eq!(s.flows[1].expect, Expect::Reject);
        assert_eq!(s.flows[1].proto, "tcp");
        assert_eq!(
            s.flows[2].expect,
            Expect::Backends(["[fd00:10::5]:80".to_string()].into())
        );
        let pods = s.endpoint_pods();
        assert_eq!(pods.len(), 2);
        assert_eq!(
            pods[&"10.180.0.1".parse::<IpAddr>().unwrap()],
            [53, 80].into()
        );
    }

    #[test]
    fn parses_expect_one_of_and_sticky() {
        let flows: Vec<Flow> = serde_yaml::from_str(
            r#"
- {name: a, src: pod, dst: '172.30.0.41:80', expect_one_of: ['10.180.0.1:80', '10.180.0.2:80'], sticky: true}
- {name: b, src: pod, dst: '172.30.0.41:80', expect_one_of: ['10.180.0.1:80']}
"#,
        )
        .unwrap();
        assert!(flows[0].sticky && !flows[1].sticky);
        assert_eq!(
            flows[0].expect,
            Expect::OneOf(["10.180.0.1:80".to_string(), "10.180.0.2:80".to_string()].into())
        );
        for bad in [
            "{name: c, src: pod, dst: '1.2.3.4:80', expect: REJECT, sticky: true}",
            "{name: d, src: pod, dst: '1.2.3.4:80', expect: REJECT, expect_one_of: ['1.1.1.1:1']}",
            "{name: e, src: pod, dst: '1.2.3.4:80'}",
            "{name: f, src: pod, dst: '1.2.3.4:80', expect_one_of: []}",
        ] {
            assert!(serde_yaml::from_str::<Flow>(bad).is_err(), "{bad}");
        }
    }

    fn result(name: &str, status: Status) -> FlowResult {
        FlowResult {
            name: name.into(),
            src: "pod".into(),
            dst: "172.30.0.41:80".into(),
            proto: "tcp".into(),
            expected: "REJECT".into(),
            got: "TIMEOUT x2".into(),
            status,
            mode_note: None,
        }
    }

    #[test]
    fn report_names_failed_and_pending_flows() {
        let mut report = ScenarioReport {
            scenario: "s".into(),
            mode: "nftables".into(),
            flows: vec![
                result("ok", Status::Pass),
                result("later", Status::Pending),
                result("surprise", Status::PendingPasses),
            ],
            diagnostics: String::new(),
        };
        assert!(
            report.check().is_ok(),
            "pending flows do not fail a scenario"
        );
        let text = report.to_string();
        assert!(text.contains("PENDING         later"), "{text}");
        assert!(
            text.contains("pending flow \"surprise\" passes now"),
            "{text}"
        );
        report.flows.push(result("broken", Status::Fail));
        report.flows.push(result("broken too", Status::Fail));
        let err = format!("{:#}", report.check().unwrap_err());
        assert!(
            err.contains("2 flow(s) failed") && err.contains("s/broken too"),
            "{err}"
        );
    }

    #[test]
    fn own_scenarios_parse() {
        let dir = crate::agent::workspace_root().join("e2e/scenarios");
        for f in scenario_files(&dir).unwrap() {
            Scenario::load(&f).unwrap();
        }
    }

    /// Every overlay entry names a flow of a scenario file (a file not in this checkout
    /// yet is reported, not failed), and every `by_mode` names a mode.
    #[test]
    fn mode_expectations_name_real_flows_and_modes() {
        let root = crate::agent::workspace_root();
        let mut files = scenario_files(&root.join("e2e/scenarios")).unwrap();
        files.extend(scenario_files(&root.join("../shared/scenarios")).unwrap_or_default());
        let scenarios: Vec<Scenario> = files.iter().map(|f| Scenario::load(f).unwrap()).collect();
        for s in &scenarios {
            for f in &s.flows {
                for mode in f.by_mode.keys() {
                    assert!(
                        ["iptables", "nftables", "ipvs", "ebpf"].contains(&mode.as_str()),
                        "{}/{}: by_mode {mode:?} is no mode",
                        s.name,
                        f.name
                    );
                }
            }
        }
        for mode in ["iptables", "nftables", "ipvs", "ebpf"] {
            let overlay = ModeOverlay::load(mode).unwrap();
            for o in &overlay.flows {
                let Some(s) = scenarios.iter().find(|s| s.name == o.scenario) else {
                    eprintln!(
                        "{mode} overlay: scenario {:?} is not in this checkout",
                        o.scenario
                    );
                    continue;
                };
                assert!(
                    s.flows.iter().any(|f| f.name == o.flow),
                    "{mode} overlay: scenario {:?} has no flow {:?}",
                    o.scenario,
                    o.flow
                );
                assert!(
                    !o.why.trim().is_empty(),
                    "{mode} overlay: {}/{}: why",
                    o.scenario,
                    o.flow
                );
            }
        }
    }

    #[test]
    fn a_flow_in_a_mode_takes_its_expectation() {
        let flow: Flow = serde_yaml::from_str(
            r#"{name: a, src: node, dst: '1.2.3.4:80', expect: ['10.0.0.5:80'], masq: true,
               by_mode: {ebpf: {masq: false, why: socket LB}}}"#,
        )
        .unwrap();
        assert_eq!(flow.in_mode("nftables").0.masq, Some(true));
        let (ebpf, why) = flow.in_mode("ebpf");
        assert_eq!(
            (ebpf.masq, why.as_deref()),
            (Some(false), Some("socket LB"))
        );
        assert!(serde_yaml::from_str::<Flow>(
            "{name: b, src: pod, dst: '1.2.3.4:80', expect: DROP, by_mode: {ebpf: {masq: false}}}"
        )
        .is_err(), "a mode expectation needs its why");
    }

    #[test]
    fn shared_scenarios_parse() {
        let dir = crate::agent::workspace_root().join("../shared/scenarios");
        let Ok(files) = scenario_files(&dir) else {
            return;
        };
        for f in files {
            Scenario::load(&f).unwrap();
        }
    }
}
