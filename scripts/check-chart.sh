#!/usr/bin/env bash
# Checks the Helm chart charts/switchyard without a cluster:
#   - helm lint;
#   - helm template with the default values and with an eBPF pool, and checks of the
#     rendered objects (agent not privileged, its capabilities, RBAC rules exactly equal to
#     the table below, CRDs identical to crds/switchyard.yaml, ProxyConfigs from values);
#   - values the chart must refuse (a fallback repeating its mode, a name used twice).
# Needs helm (installed into target/tools by ../shared/tools/install-helm when missing),
# python3 and PyYAML (installed into target/tools/python when missing).
# Exit status: 0 when every check passes; every mismatch is printed.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
chart=charts/switchyard
tools=$root/target/tools
namespace=kube-system
release=switchyard

die() {
    echo "check-chart: $*" >&2
    exit 1
}

# --- tools -------------------------------------------------------------------------
if command -v helm >/dev/null 2>&1; then
    helm=$(command -v helm)
elif [[ -x $tools/helm ]]; then
    helm=$tools/helm
else
    installer=$root/../shared/tools/install-helm
    [[ -x $installer ]] || die "helm is not on PATH and $installer is missing: install helm (v3 or v4), or put the shared/ tools beside this clone"
    mkdir -p "$tools"
    echo "check-chart: installing helm into $tools"
    "$installer" "$tools" >/dev/null
    helm=$tools/helm
fi
command -v python3 >/dev/null 2>&1 || die "python3 is required"
if ! python3 -c 'import yaml' >/dev/null 2>&1; then
    if ! PYTHONPATH=$tools/python python3 -c 'import yaml' >/dev/null 2>&1; then
        echo "check-chart: installing PyYAML into $tools/python"
        python3 -m pip install --quiet --target "$tools/python" pyyaml ||
            die "cannot install PyYAML (pip install pyyaml)"
    fi
    export PYTHONPATH=$tools/python${PYTHONPATH:+:$PYTHONPATH}
fi
echo "check-chart: $("$helm" version --short)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- lint --------------------------------------------------------------------------
"$helm" lint --strict "$chart"

# --- render ------------------------------------------------------------------------
render() {
    local out=$1
    shift
    "$helm" template "$release" "$chart" --namespace "$namespace" --include-crds "$@" >"$out"
}

cat >"$tmp/ebpf-values.yaml" <<'EOF'
proxyConfigs:
  - name: default
    priority: 0
    nodeSelector: {}
    mode: nftables
    fallback: [iptables]
  - name: ebpf-pool
    priority: 20
    nodeSelector:
      matchLabels:
        switchyard.dev/pool: ebpf
    mode: ebpf
    fallback: [nftables]
    ebpf:
      maxServices: 65536
      maxEndpoints: 262144
EOF
cat >"$tmp/ipvs-values.yaml" <<'EOF'
proxyConfigs:
  - name: default
    mode: nftables
    fallback: [iptables]
  - name: ipvs-pool
    priority: 10
    nodeSelector:
      matchLabels:
        switchyard.dev/pool: ipvs
    mode: ipvs
    fallback: [nftables]
    ipvs:
      scheduler: rr
EOF
cat >"$tmp/ebpf-fallback-values.yaml" <<'EOF'
proxyConfigs:
  - name: default
    mode: ipvs
    fallback: [ebpf, iptables]
    ipvs:
      scheduler: lc
EOF

render "$tmp/default.yaml"
render "$tmp/ebpf.yaml" -f "$tmp/ebpf-values.yaml"
render "$tmp/ebpf-fallback.yaml" -f "$tmp/ebpf-fallback-values.yaml"
render "$tmp/ebpf-mount.yaml" -f "$tmp/ebpf-values.yaml" --set agent.ebpf.mountBpffs=true \
    --set agent.ebpf.hostCgroupRoot=/sys/fs/cgroup/unified
render "$tmp/ipvs.yaml" -f "$tmp/ipvs-values.yaml"
render "$tmp/apiserver.yaml" --set apiServer.host=172.18.0.2 --set apiServer.port=6443

# --- values the chart must refuse ----------------------------------------------------
refused=0
must_fail() {
    local what=$1 expect=$2
    shift 2
    local err
    if err=$("$helm" template "$release" "$chart" --namespace "$namespace" "$@" 2>&1 >/dev/null); then
        echo "FAIL: $what: helm template accepted it" >&2
        refused=1
    elif ! grep -q -- "$expect" <<<"$err"; then
        echo "FAIL: $what: error does not mention \"$expect\": $err" >&2
        refused=1
    else
        echo "ok: refused $what"
    fi
}
cat >"$tmp/repeat.yaml" <<'EOF'
proxyConfigs:
  - {name: default, mode: nftables, fallback: [iptables, nftables]}
EOF
cat >"$tmp/duplicate.yaml" <<'EOF'
proxyConfigs:
  - {name: pool, mode: nftables}
  - {name: pool, mode: ipvs, fallback: [nftables]}
EOF
cat >"$tmp/auto-fallback.yaml" <<'EOF'
proxyConfigs:
  - {name: default, mode: ipvs, fallback: [auto]}
EOF
cat >"$tmp/bad-mode.yaml" <<'EOF'
proxyConfigs:
  - {name: default, mode: userspace}
EOF
must_fail "a fallback repeating the mode" "repeats mode" -f "$tmp/repeat.yaml"
must_fail "a ProxyConfig name used twice" "used twice" -f "$tmp/duplicate.yaml"
must_fail "auto as a fallback" "is not one of" -f "$tmp/auto-fallback.yaml"
must_fail "an unknown mode" "is not one of" -f "$tmp/bad-mode.yaml"
must_fail "the node restriction before Kubernetes 1.30" "needs ValidatingAdmissionPolicy" --kube-version 1.29.0
render "$tmp/no-restriction.yaml" --kube-version 1.29.0 --set agent.nodeRestriction.enabled=false

# --- checks of the rendered objects ------------------------------------------------------
python3 - "$tmp" "$chart/crds/switchyard.yaml" "$namespace" "$release" <<'PY'
import sys
import yaml

tmp, crd_file, namespace, release = sys.argv[1:5]
prefix = f"{release}"  # the release name contains "switchyard": names are switchyard-*
failures = []


def fail(scenario, message):
    failures.append(f"{scenario}: {message}")


def load(name):
    with open(f"{tmp}/{name}.yaml") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def find(docs, kind, name=None):
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(scenario, docs, kind, name):
    found = find(docs, kind, name)
    if len(found) != 1:
        fail(scenario, f"expected one {kind} {name}, found {len(found)}")
        return None
    return found[0]


# RBAC: exactly the API calls the code makes. One atom per (apiGroup, resource, verb,
# resourceName); "" is the core group, or "any name" for resourceName.
AGENT_CLUSTER = {
    # agent/src/watch.rs follow_cluster: watcher(Api::<Service>::all) -> list + watch
    ("", "services", "list", ""), ("", "services", "watch", ""),
    # agent/src/watch.rs: watcher(Api::<Node>::all, fields metadata.name=NODE) -> list + watch
    ("", "nodes", "list", ""), ("", "nodes", "watch", ""),
    # agent/src/status.rs Writer::write: self.nodes.get(node_name)
    ("", "nodes", "get", ""),
    # agent/src/watch.rs: watcher(Api::<EndpointSlice>::all) -> list + watch
    ("discovery.k8s.io", "endpointslices", "list", ""),
    ("discovery.k8s.io", "endpointslices", "watch", ""),
    # agent/src/watch.rs: watcher(Api::<ProxyConfig>::all) -> list + watch
    ("switchyard.dev", "proxyconfigs", "list", ""),
    ("switchyard.dev", "proxyconfigs", "watch", ""),
    # agent/src/status.rs Writer::write: proxy_nodes.patch(Patch::Apply) -> patch, and
    # create when the ProxyNode does not exist yet (the API server authorizes an apply
    # that creates as `create`)
    ("switchyard.dev", "proxynodes", "patch", ""),
    ("switchyard.dev", "proxynodes", "create", ""),
    # agent/src/status.rs Writer::write: proxy_nodes.patch_status(Patch::Apply)
    ("switchyard.dev", "proxynodes/status", "patch", ""),
}
AGENT_EVENTS = {
    # agent/src/status.rs Writer::write: Recorder::publish (kube-runtime 5 events.rs):
    # events.create, then events.patch(Merge) for a repeat; a Node's Events go to "default"
    ("events.k8s.io", "events", "create", ""),
    ("events.k8s.io", "events", "patch", ""),
}
OPERATOR_CLUSTER = {
    # operator/src/lib.rs reconcile: configs.list
    ("switchyard.dev", "proxyconfigs", "list", ""),
    # operator/src/lib.rs reconcile: configs.patch_status(Patch::Merge)
    ("switchyard.dev", "proxyconfigs/status", "patch", ""),
    # operator/src/lib.rs reconcile: proxy_nodes.list, proxy_nodes.delete
    ("switchyard.dev", "proxynodes", "list", ""),
    ("switchyard.dev", "proxynodes", "delete", ""),
    # operator/src/lib.rs reconcile: nodes.list_metadata -> list
    ("", "nodes", "list", ""),
}
OPERATOR_LEASE = {
    # operator/src/leader.rs try_acquire_or_renew: api.get_opt, api.create, api.replace
    # on the Lease named in operator/src/lib.rs run ("switchyard-operator")
    ("coordination.k8s.io", "leases", "get", "switchyard-operator"),
    ("coordination.k8s.io", "leases", "update", "switchyard-operator"),
    ("coordination.k8s.io", "leases", "create", ""),
}
# (kind, name, namespace, rules, service account)
EXPECTED_ROLES = [
    ("ClusterRole", f"{prefix}-agent", None, AGENT_CLUSTER, f"{prefix}-agent"),
    ("Role", f"{prefix}-agent-events", "default", AGENT_EVENTS, f"{prefix}-agent"),
    ("ClusterRole", f"{prefix}-operator", None, OPERATOR_CLUSTER, f"{prefix}-operator"),
    ("Role", f"{prefix}-operator-lease", namespace, OPERATOR_LEASE, f"{prefix}-operator"),
]


def atoms(rules):
    out = set()
    for r in rules or []:
        for g in r.get("apiGroups", []):
            for res in r.get("resources", []):
                for v in r.get("verbs", []):
                    for n in r.get("resourceNames") or [""]:
                        out.add((g, res, v, n))
        if r.get("nonResourceURLs"):
            out.add(("nonResourceURLs", ",".join(r["nonResourceURLs"]), ",".join(r["verbs"]), ""))
    return out


def check_rbac(scenario, docs):
    roles = find(docs, "ClusterRole") + find(docs, "Role")
    expected_names = {(k, n) for k, n, _, _, _ in EXPECTED_ROLES}
    for r in roles:
        if (r["kind"], r["metadata"]["name"]) not in expected_names:
            fail(scenario, f"unexpected {r['kind']} {r['metadata']['name']}")
    for kind, name, ns, rules, sa in EXPECTED_ROLES:
        role = one(scenario, docs, kind, name)
        if role is None:
            continue
        if ns is not None and role["metadata"].get("namespace") != ns:
            fail(scenario, f"{kind} {name} is in namespace {role['metadata'].get('namespace')!r}, expected {ns!r}")
        got = atoms(role.get("rules"))
        for a in sorted(got - rules):
            fail(scenario, f"{kind} {name} grants {a} which the code never uses")
        for a in sorted(rules - got):
            fail(scenario, f"{kind} {name} lacks {a} which the code needs")
        binding_kind = "ClusterRoleBinding" if kind == "ClusterRole" else "RoleBinding"
        b = one(scenario, docs, binding_kind, name)
        if b is None:
            continue
        if ns is not None and b["metadata"].get("namespace") != ns:
            fail(scenario, f"{binding_kind} {name} is not in namespace {ns}")
        if b["roleRef"] != {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name}:
            fail(scenario, f"{binding_kind} {name} refers to {b['roleRef']}")
        subjects = [(s["kind"], s["name"], s.get("namespace")) for s in b.get("subjects", [])]
        if subjects != [("ServiceAccount", sa, namespace)]:
            fail(scenario, f"{binding_kind} {name} binds {subjects}, expected ServiceAccount {namespace}/{sa}")
    for sa in (f"{prefix}-agent", f"{prefix}-operator"):
        s = one(scenario, docs, "ServiceAccount", sa)
        if s is not None and s["metadata"].get("namespace") != namespace:
            fail(scenario, f"ServiceAccount {sa} not in {namespace}")


def check_crds(scenario, docs):
    with open(crd_file) as f:
        shipped = {d["metadata"]["name"]: d for d in yaml.safe_load_all(f) if d}
    if set(shipped) != {"proxyconfigs.switchyard.dev", "proxynodes.switchyard.dev"}:
        fail(scenario, f"{crd_file} holds {sorted(shipped)}")
    rendered = {d["metadata"]["name"]: d for d in find(docs, "CustomResourceDefinition")}
    if rendered != shipped:
        fail(scenario, f"rendered CRDs {sorted(rendered)} differ from {crd_file}")


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def check_agent(scenario, docs, ebpf, ipvs):
    ds = one(scenario, docs, "DaemonSet", f"{prefix}-agent")
    if ds is None:
        return
    spec = ds["spec"]
    pod = spec["template"]["spec"]
    want = {
        "hostNetwork": True,
        "dnsPolicy": "ClusterFirstWithHostNet",
        "priorityClassName": "system-node-critical",
        "serviceAccountName": f"{prefix}-agent",
    }
    for k, v in want.items():
        if pod.get(k) != v:
            fail(scenario, f"agent pod {k} = {pod.get(k)!r}, expected {v!r}")
    if {"operator": "Exists"} not in pod.get("tolerations", []):
        fail(scenario, "agent does not tolerate every taint (operator: Exists)")
    us = spec.get("updateStrategy", {})
    if us.get("type") != "RollingUpdate" or us.get("rollingUpdate", {}).get("maxUnavailable") != 1:
        fail(scenario, f"agent updateStrategy {us}")
    (c,) = pod["containers"]
    if c.get("args", [])[:1] != ["agent"]:
        fail(scenario, f"agent args {c.get('args')}")
    if c.get("image") != "ghcr.io/switchyard/switchyard:0.1.0":
        fail(scenario, f"agent image {c.get('image')} (tag should default to appVersion)")
    node_name = env_of(c).get("NODE_NAME", {})
    if node_name.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "spec.nodeName":
        fail(scenario, "NODE_NAME does not come from spec.nodeName")
    sc = c.get("securityContext", {})
    if sc.get("privileged", False) is not False:
        fail(scenario, "agent container is privileged")
    if sc.get("allowPrivilegeEscalation") is not False:
        fail(scenario, "agent container may escalate privileges")
    for k in ("privileged",):
        if pod.get("securityContext", {}).get(k):
            fail(scenario, f"agent pod securityContext {k}")
    caps = sc.get("capabilities", {})
    added = set(caps.get("add", []))
    if "ALL" not in caps.get("drop", []):
        fail(scenario, "agent does not drop ALL capabilities")
    for cap in ("NET_ADMIN", "NET_RAW"):
        if cap not in added:
            fail(scenario, f"agent lacks capability {cap}")
    # eBPF: loading needs BPF and PERFMON, attaching NET_ADMIN; SYS_ADMIN (mounting bpffs)
    # only ever in the optional init container.
    ebpf_caps = {"BPF", "PERFMON"}
    if ebpf and not ebpf_caps <= added:
        fail(scenario, f"eBPF pool configured but agent lacks {sorted(ebpf_caps - added)}")
    if not ebpf and added & ebpf_caps:
        fail(scenario, f"no eBPF pool but agent has {sorted(added & ebpf_caps)}")
    # An IPVS pool loads its modules (ip_vs, the scheduler's, nf_conntrack): SYS_MODULE,
    # and only then.
    if ipvs and "SYS_MODULE" not in added:
        fail(scenario, "IPVS pool configured but agent lacks SYS_MODULE")
    if not ipvs and "SYS_MODULE" in added:
        fail(scenario, "no IPVS pool but agent has SYS_MODULE")
    expected = ebpf_caps | {"NET_ADMIN", "NET_RAW", "SYS_MODULE"}
    if added - expected:
        fail(scenario, f"agent has unexpected capabilities {sorted(added - expected)}")
    # Liveness (and startup) is "the loops turn", readiness is "synced": a node whose
    # syncs fail must not be restarted (issue 14, defect 2).
    probes = {
        "startupProbe": "/livez",
        "livenessProbe": "/livez",
        "readinessProbe": "/healthz",
    }
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    if ports.get("healthz") != 10256:
        fail(scenario, f"agent healthz port {ports}")
    for probe, path in probes.items():
        http = c.get(probe, {}).get("httpGet", {})
        if http.get("path") != path or http.get("port") not in ("healthz", 10256):
            fail(scenario, f"agent {probe} = {http}, expected {path} on 10256")
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}

    def host_path(mount_path):
        m = mounts.get(mount_path)
        if m is None:
            fail(scenario, f"agent does not mount {mount_path}")
            return None, {}
        return m, volumes.get(m["name"], {}).get("hostPath", {})

    m, hp = host_path("/run/xtables.lock")
    if m and (hp.get("path") != "/run/xtables.lock" or hp.get("type") != "FileOrCreate"):
        fail(scenario, f"/run/xtables.lock volume {hp}")
    m, hp = host_path("/lib/modules")
    if m and (hp.get("path") != "/lib/modules" or not m.get("readOnly")):
        fail(scenario, "/lib/modules must be the host's, read-only")
    m, hp = host_path("/sys/fs/bpf")
    if m:
        if hp.get("path") != "/sys/fs/bpf":
            fail(scenario, f"/sys/fs/bpf volume {hp}")
        if bool(m.get("readOnly")) == ebpf:
            fail(scenario, f"/sys/fs/bpf readOnly={m.get('readOnly')} with eBPF {'on' if ebpf else 'off'}")
        if m.get("mountPropagation") == "Bidirectional":
            fail(scenario, "Bidirectional propagation needs a privileged container")
    cgroup_arg = "--cgroup-root=/run/switchyard/cgroupv2"
    if ebpf:
        m, hp = host_path("/run/switchyard/cgroupv2")
        want_root = "/sys/fs/cgroup/unified" if scenario == "ebpf-mount" else "/sys/fs/cgroup"
        if m and (hp.get("path") != want_root or not m.get("readOnly")):
            fail(scenario, f"cgroup v2 root volume {hp}, expected {want_root} read-only")
        if cgroup_arg not in c.get("args", []):
            fail(scenario, f"agent args {c.get('args')} lack {cgroup_arg}")
    elif "/run/switchyard/cgroupv2" in mounts or cgroup_arg in c.get("args", []):
        fail(scenario, "no eBPF pool but the host's cgroup v2 root is mounted")
    inits = pod.get("initContainers", [])
    if scenario == "ebpf-mount":
        names = [i["name"] for i in inits]
        if names != ["mount-bpffs"]:
            fail(scenario, f"init containers {names}, expected [mount-bpffs]")
        elif not inits[0].get("securityContext", {}).get("privileged"):
            fail(scenario, "mount-bpffs must be privileged (Bidirectional propagation)")
    elif inits:
        fail(scenario, f"unexpected init containers {[i['name'] for i in inits]}")
    if "resources" not in c:
        fail(scenario, "agent has no resources")
    # BENCHMARKS.md "Agent pod memory": a full sync at 50k Services peaks at the agent's
    # 369 MiB plus nft's 1,444 MiB in the container; the default limit must hold it.
    limit = c.get("resources", {}).get("limits", {}).get("memory", "0")
    units = {"Mi": 1, "Gi": 1024}
    mib = float(limit[:-2]) * units[limit[-2:]] if limit[-2:] in units else 0
    if mib < 369 + 1444:
        fail(scenario, f"agent memory limit {limit} is below a 50k-Service full sync (1813 MiB)")


def check_node_restriction(scenario, docs, enabled):
    """The ValidatingAdmissionPolicy keeping each agent to its own ProxyNode (its CEL is
    evaluated against its inputs in e2e/tests/admission_policy.rs)."""
    name = f"{prefix}-agent-own-proxynode"
    policies = find(docs, "ValidatingAdmissionPolicy")
    bindings = find(docs, "ValidatingAdmissionPolicyBinding")
    if not enabled:
        if policies or bindings:
            fail(scenario, "node restriction disabled but a policy is rendered")
        return
    p = one(scenario, docs, "ValidatingAdmissionPolicy", name)
    b = one(scenario, docs, "ValidatingAdmissionPolicyBinding", name)
    if p is None or b is None:
        return
    spec = p["spec"]
    rules = spec["matchConstraints"]["resourceRules"]
    if rules != [{"apiGroups": ["switchyard.dev"], "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"],
                  "resources": ["proxynodes", "proxynodes/status"]}]:
        fail(scenario, f"policy matches {rules}")
    agent = f"system:serviceaccount:{namespace}:{prefix}-agent"
    if [c["expression"].strip() for c in spec.get("matchConditions", [])] != [f"request.userInfo.username == '{agent}'"]:
        fail(scenario, f"policy does not match exactly the agent's service account {agent}")
    if spec.get("failurePolicy") != "Fail":
        fail(scenario, "policy must fail closed")
    if b["spec"] != {"policyName": name, "validationActions": ["Deny"]}:
        fail(scenario, f"binding {b['spec']}")


def check_operator(scenario, docs):
    d = one(scenario, docs, "Deployment", f"{prefix}-operator")
    if d is None:
        return
    if d["spec"].get("replicas") != 2:
        fail(scenario, f"operator replicas {d['spec'].get('replicas')}")
    pod = d["spec"]["template"]["spec"]
    if pod.get("serviceAccountName") != f"{prefix}-operator":
        fail(scenario, "operator service account")
    (c,) = pod["containers"]
    if c.get("args", [])[:1] != ["operator"]:
        fail(scenario, f"operator args {c.get('args')}")
    env = env_of(c)
    for name, path in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
        if env.get(name, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != path:
            fail(scenario, f"operator {name} not from {path}")
    psc = pod.get("securityContext", {})
    sc = c.get("securityContext", {})
    if not (psc.get("runAsNonRoot") or sc.get("runAsNonRoot")):
        fail(scenario, "operator may run as root")
    if not sc.get("readOnlyRootFilesystem"):
        fail(scenario, "operator root filesystem is writable")
    if sc.get("privileged") or sc.get("capabilities", {}).get("add"):
        fail(scenario, "operator has privileges")


def check_proxy_configs(scenario, docs, expected):
    got = {}
    for d in find(docs, "ProxyConfig"):
        if d["apiVersion"] != "switchyard.dev/v1alpha1":
            fail(scenario, f"ProxyConfig {d['metadata']['name']} apiVersion {d['apiVersion']}")
        s = d.get("spec", {})
        got[d["metadata"]["name"]] = (s.get("mode"), s.get("fallback", []), s.get("priority", 0))
        if "name" in s:
            fail(scenario, f"ProxyConfig {d['metadata']['name']} spec carries name")
    if got != expected:
        fail(scenario, f"ProxyConfigs {got}, expected {expected}")
    return {d["metadata"]["name"]: d["spec"] for d in find(docs, "ProxyConfig")}


def check_api_server_env(scenario, docs, host):
    for kind, name in (("DaemonSet", f"{prefix}-agent"), ("Deployment", f"{prefix}-operator")):
        w = one(scenario, docs, kind, name)
        if w is None:
            continue
        env = env_of(w["spec"]["template"]["spec"]["containers"][0])
        got = env.get("KUBERNETES_SERVICE_HOST", {}).get("value")
        if got != host:
            fail(scenario, f"{kind} {name} KUBERNETES_SERVICE_HOST = {got!r}, expected {host!r}")
        if host and env.get("KUBERNETES_SERVICE_PORT", {}).get("value") != "6443":
            fail(scenario, f"{kind} {name} KUBERNETES_SERVICE_PORT")


scenarios = {
    "default": (False, False, {"default": ("nftables", ["iptables"], 0)}),
    "ebpf": (True, False, {"default": ("nftables", ["iptables"], 0), "ebpf-pool": ("ebpf", ["nftables"], 20)}),
    "ebpf-fallback": (True, True, {"default": ("ipvs", ["ebpf", "iptables"], 0)}),
    "ebpf-mount": (True, False, {"default": ("nftables", ["iptables"], 0), "ebpf-pool": ("ebpf", ["nftables"], 20)}),
    "ipvs": (False, True, {"default": ("nftables", ["iptables"], 0), "ipvs-pool": ("ipvs", ["nftables"], 10)}),
}
for scenario, (ebpf, ipvs, configs) in scenarios.items():
    docs = load(scenario)
    check_crds(scenario, docs)
    check_rbac(scenario, docs)
    check_agent(scenario, docs, ebpf, ipvs)
    check_operator(scenario, docs)
    check_node_restriction(scenario, docs, True)
    specs = check_proxy_configs(scenario, docs, configs)
    check_api_server_env(scenario, docs, None)
    if scenario == "ebpf" and specs.get("ebpf-pool", {}).get("ebpf") != {"maxServices": 65536, "maxEndpoints": 262144}:
        fail(scenario, "ebpf tuning not passed through")
    if scenario == "ebpf-fallback" and specs.get("default", {}).get("ipvs") != {"scheduler": "lc"}:
        fail(scenario, "ipvs tuning not passed through")
    kinds = sorted({d["kind"] for d in docs})
    print(f"ok: rendered {scenario}: {len(docs)} objects ({', '.join(kinds)})" if not failures else f"checked {scenario}")
check_api_server_env("apiserver", load("apiserver"), "172.18.0.2")
check_node_restriction("no-restriction", load("no-restriction"), False)

if failures:
    for f in failures:
        print(f"FAIL: {f}", file=sys.stderr)
    sys.exit(1)
print("ok: RBAC equals the table of API calls; agent unprivileged, no escalation (NET_ADMIN, NET_RAW; BPF and PERFMON only with an eBPF pool, SYS_ADMIN only in the opt-in bpffs init container, SYS_MODULE only with an IPVS pool, /lib/modules read-only); CRDs and ProxyConfigs rendered")
PY

[[ $refused == 0 ]] || die "the chart accepted values it must refuse"
echo "check-chart: all checks passed"
