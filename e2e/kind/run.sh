#!/usr/bin/env bash
# Switchyard on a real cluster: creates a kind cluster without kube-proxy, builds and
# loads the image, installs the chart (a default nftables pool and an "ipvs" pool on one
# worker that falls back to nftables), then checks Service traffic from pods and from the
# nodes, and that ProxyConfig/ProxyNode report the modes and fallbacks.
#
# usage: e2e/kind/run.sh [--keep] [--name CLUSTER] [--image REPO:TAG] [--skip-build]
#   --keep        leave the cluster running (default: deleted on exit, pass or fail)
#   --name        kind cluster name (default switchyard-e2e)
#   --image       image to build and load (default switchyard:e2e)
#   --skip-build  load --image as it is instead of building it
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cluster=switchyard-e2e
image=switchyard:e2e
keep=0
build=1
ns=switchyard-e2e
release=switchyard
sysns=kube-system
timeout=300s

die() {
    echo "kind-e2e: $*" >&2
    exit 1
}
step() { echo "==> $*"; }
pass() { echo "ok: $*"; }
failures=0
check_fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}

while [[ $# -gt 0 ]]; do
    case $1 in
    --keep) keep=1 ;;
    --name)
        cluster=${2:?--name needs a value}
        shift
        ;;
    --image)
        image=${2:?--image needs a value}
        shift
        ;;
    --skip-build) build=0 ;;
    -h | --help)
        sed -n '2,11p' "$0"
        exit 0
        ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done
[[ $image == *:* ]] || die "--image must be REPO:TAG"

# --- prerequisites -------------------------------------------------------------------
for tool in kind docker kubectl helm python3; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is required (see e2e/kind/README.md)"
done
docker info >/dev/null 2>&1 || die "docker cannot reach a container engine (docker info failed)"

tmp=$(mktemp -d)
export KUBECONFIG=$tmp/kubeconfig

diagnose() {
    echo "---- diagnostics ----" >&2
    kubectl get nodes -o wide >&2 || true
    kubectl get pods -A -o wide >&2 || true
    kubectl get proxyconfig -o yaml >&2 || true
    kubectl get proxynode -o yaml >&2 || true
    kubectl -n "$sysns" logs -l app.kubernetes.io/component=agent --tail=100 --prefix >&2 || true
    kubectl -n "$sysns" logs -l app.kubernetes.io/component=operator --tail=50 --prefix >&2 || true
}

cleanup() {
    local rc=$?
    if [[ $rc -ne 0 ]]; then
        diagnose
    fi
    if [[ $keep -eq 1 ]]; then
        kind get kubeconfig --name "$cluster" >"$here/kubeconfig" 2>/dev/null || true
        echo "kind-e2e: cluster $cluster kept (KUBECONFIG=$here/kubeconfig; delete with: kind delete cluster --name $cluster)"
    else
        kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
    fi
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT

# Runs "$@" until it succeeds, at most $1 times one second apart.
retry() {
    local tries=$1
    shift
    local i
    for ((i = 0; i < tries; i++)); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 1
    done
    "$@"
}

# --- cluster, image, chart -----------------------------------------------------------
step "creating kind cluster $cluster (kubeProxyMode: none)"
kind create cluster --name "$cluster" --config "$here/cluster.yaml" --kubeconfig "$KUBECONFIG"
control_plane=$cluster-control-plane
pool_worker=$cluster-worker
plain_worker=$cluster-worker2

node_ip() {
    docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$1"
}
cp_ip=$(node_ip "$control_plane")
pool_ip=$(node_ip "$pool_worker")
plain_ip=$(node_ip "$plain_worker")
[[ -n $cp_ip && -n $pool_ip && -n $plain_ip ]] || die "cannot find the node containers' IPs"

if [[ $build -eq 1 ]]; then
    step "building $image from $root/Dockerfile"
    docker build -t "$image" "$root"
fi
step "loading $image into the cluster"
kind load docker-image "$image" --name "$cluster"

# Without kube-proxy nothing serves the kubernetes Service's ClusterIP until Switchyard
# runs, so its pods talk to the API server at the control plane's own address.
step "installing the chart (API server at $cp_ip:6443)"
helm install "$release" "$root/charts/switchyard" --namespace "$sysns" \
    -f "$here/values.yaml" \
    --set image.repository="${image%:*}" --set image.tag="${image##*:}" \
    --set image.pullPolicy=Never \
    --set apiServer.host="$cp_ip" --set apiServer.port=6443
kubectl -n "$sysns" rollout status daemonset/"$release"-agent --timeout="$timeout"
kubectl -n "$sysns" rollout status deployment/"$release"-operator --timeout="$timeout"
# CoreDNS reaches the API server through the kubernetes Service: Switchyard programs it.
kubectl -n "$sysns" rollout status deployment/coredns --timeout="$timeout"
pass "agent, operator and CoreDNS (through the kubernetes ClusterIP) are ready"

# --- backends ------------------------------------------------------------------------
step "deploying echo backends, a client and the Services"
kubectl apply -f "$here/backends.yaml"
kubectl -n "$ns" rollout status deployment/echo --timeout="$timeout"
kubectl -n "$ns" rollout status deployment/local-echo --timeout="$timeout"
kubectl -n "$ns" wait pod/client --for=condition=Ready --timeout="$timeout"
read -r -a backends <<<"$(kubectl -n "$ns" get pods -l app=echo -o jsonpath='{.items[*].metadata.name}')"
local_backend=$(kubectl -n "$ns" get pods -l app=local-echo -o jsonpath='{.items[0].metadata.name}')
[[ ${#backends[@]} -eq 3 ]] || die "expected 3 echo pods, found ${backends[*]}"

cluster_ip() { kubectl -n "$ns" get service "$1" -o jsonpath='{.spec.clusterIP}'; }

# From the client pod: its netexec /dial connects TRIES times to HOST:PORT over PROTO
# and lists who answered, one per line (through the API server's pod proxy, which does
# not involve any Service).
dial() {
    local proto=$1 host=$2 port=$3 request=$4 tries=$5
    kubectl get --raw "/api/v1/namespaces/$ns/pods/client:8080/proxy/dial?request=$request&protocol=$proto&host=$host&port=$port&tries=$tries" |
        python3 -c 'import json, sys; r = json.load(sys.stdin).get("responses") or []; print("\n".join(r)); sys.exit(0 if r else 1)'
}

# From a node's network namespace (the kind node container).
from_node() {
    local node=$1 url=$2
    docker exec "$node" curl -sS --max-time 5 "$url"
}

is_backend() {
    local name=$1 b
    for b in "${backends[@]}"; do
        [[ $name == "$b" ]] && return 0
    done
    return 1
}

# Every answer is an echo backend and, with several tries, more than one answered.
expect_backends() {
    local what=$1 answers=$2 tries=$3 distinct line
    if [[ -z $answers ]]; then
        check_fail "$what: no answer"
        return
    fi
    while read -r line; do
        is_backend "$line" || {
            check_fail "$what: answer \"$line\" is not an echo backend"
            return
        }
    done <<<"$answers"
    distinct=$(sort -u <<<"$answers" | wc -l)
    if [[ $(wc -l <<<"$answers") -ne $tries ]]; then
        check_fail "$what: $(wc -l <<<"$answers") answers to $tries tries"
    elif [[ $tries -gt 1 && $distinct -lt 2 ]]; then
        check_fail "$what: all $tries tries reached the same backend (no load balancing)"
    else
        pass "$what: $tries answers from $distinct backends"
    fi
}

# --- flows from pods ----------------------------------------------------------------
step "flows from a pod"
retry 30 dial http "$(cluster_ip echo-clusterip)" 80 hostname 1 || true
expect_backends "pod -> ClusterIP TCP" "$(dial http "$(cluster_ip echo-clusterip)" 80 hostname 30)" 30
expect_backends "pod -> ClusterIP UDP" "$(dial udp "$(cluster_ip echo-udp)" 5353 hostname 30)" 30
expect_backends "pod -> NodePort (pool worker)" "$(dial http "$pool_ip" 30080 hostname 10)" 10
expect_backends "pod -> externalIP 192.0.2.10" "$(dial http 192.0.2.10 80 hostname 10)" 10
affinity=$(dial http "$(cluster_ip echo-affinity)" 80 hostname 20 || true)
if [[ $(sort -u <<<"$affinity" | wc -l) -eq 1 ]] && is_backend "$(head -n1 <<<"$affinity")"; then
    pass "pod -> sessionAffinity ClientIP: 20 tries, one backend ($(head -n1 <<<"$affinity"))"
else
    check_fail "pod -> sessionAffinity ClientIP: answers $(sort -u <<<"$affinity" | tr '\n' ' ')"
fi

# LoadBalancer ingress: no cloud controller here, so the test writes the status itself.
kubectl -n "$ns" patch service echo-lb --subresource=status --type=merge \
    -p '{"status":{"loadBalancer":{"ingress":[{"ip":"192.0.2.20"}]}}}'
retry 20 dial http 192.0.2.20 80 hostname 1 || true
expect_backends "pod -> LoadBalancer ingress 192.0.2.20" "$(dial http 192.0.2.20 80 hostname 10)" 10

# --- flows from the nodes ------------------------------------------------------------
step "flows from the nodes"
for node in "$control_plane" "$pool_worker" "$plain_worker"; do
    for target_ip in "$cp_ip" "$pool_ip" "$plain_ip"; do
        answers=""
        for _ in 1 2 3 4 5 6; do
            answers+=$(from_node "$node" "http://$target_ip:30080/hostname" || true)$'\n'
        done
        expect_backends "$node -> NodePort $target_ip:30080" "${answers%$'\n'}" 6
    done
    expect_backends "$node -> externalIP 192.0.2.10:80" "$(from_node "$node" http://192.0.2.10/hostname || true)" 1
    expect_backends "$node -> LoadBalancer 192.0.2.20:80" "$(from_node "$node" http://192.0.2.20/hostname || true)" 1
done

# externalTrafficPolicy Local: only the node with the endpoint answers, and the backend
# sees the client's own address (no masquerade).
got=$(from_node "$control_plane" "http://$pool_ip:30082/hostname" || true)
if [[ $got == "$local_backend" ]]; then
    pass "externalTrafficPolicy Local: node with the endpoint answers ($got)"
else
    check_fail "externalTrafficPolicy Local: $pool_ip:30082 answered \"$got\", expected $local_backend"
fi
seen=$(from_node "$control_plane" "http://$pool_ip:30082/clientip" || true)
if [[ ${seen%:*} == "$cp_ip" ]]; then
    pass "externalTrafficPolicy Local: source $cp_ip preserved"
else
    check_fail "externalTrafficPolicy Local: backend saw source \"$seen\", expected $cp_ip"
fi
if from_node "$control_plane" "http://$plain_ip:30082/hostname" >/dev/null 2>&1; then
    check_fail "externalTrafficPolicy Local: $plain_ip (no local endpoint) answered"
else
    pass "externalTrafficPolicy Local: node without an endpoint does not answer"
fi
seen=$(from_node "$control_plane" "http://$pool_ip:30080/clientip" || true)
if [[ -n $seen && ${seen%:*} != "$cp_ip" ]]; then
    pass "externalTrafficPolicy Cluster: NodePort traffic masqueraded (backend saw ${seen%:*})"
else
    check_fail "externalTrafficPolicy Cluster: backend saw \"$seen\", expected a masqueraded source"
fi
# The health check node port (kube-proxy serves it for Local services) is reported,
# not enforced: it is not served yet.
hc=$(kubectl -n "$ns" get service echo-local -o jsonpath='{.spec.healthCheckNodePort}')
if code=$(docker exec "$control_plane" curl -s -o /dev/null -w '%{http_code}' --max-time 3 "http://$pool_ip:$hc/") && [[ $code == 200 ]]; then
    pass "healthCheckNodePort $hc answers 200 on the node with an endpoint"
else
    echo "WARN: healthCheckNodePort $hc on $pool_ip answered \"${code:-nothing}\" (not served yet)"
fi

# --- API: ProxyConfig and ProxyNode ----------------------------------------------------
step "ProxyConfig and ProxyNode status"
jp() { kubectl get "$1" "$2" -o jsonpath="$3"; }
# field_is KIND NAME JSONPATH VALUE: re-reads the object on every call (for retry).
field_is() { [[ $(jp "$1" "$2" "$3") == "$4" ]]; }
for config in default ipvs-pool; do
    want=1
    [[ $config == default ]] && want=2
    if retry 60 field_is proxyconfig "$config" '{.status.nodesSelected}' "$want"; then
        pass "ProxyConfig $config selects $want node(s)"
    else
        check_fail "ProxyConfig $config: nodesSelected $(jp proxyconfig "$config" '{.status.nodesSelected}'), expected $want"
    fi
done
kubectl get proxyconfig
kubectl get proxynode

# A node's ProxyNode: config in force, requested mode; the active mode is the requested
# one without fallback, or the allowed fallback with fallbackActive and a reason.
expect_node() {
    local node=$1 config=$2 requested=$3 fallback=$4
    local got_config got_requested active on_fallback reason
    got_config=$(jp proxynode "$node" '{.status.config}')
    got_requested=$(jp proxynode "$node" '{.status.requestedMode}')
    active=$(jp proxynode "$node" '{.status.activeMode}')
    on_fallback=$(jp proxynode "$node" '{.status.fallbackActive}')
    reason=$(jp proxynode "$node" '{.status.fallbackReason}')
    if [[ $got_config != "$config" || $got_requested != "$requested" ]]; then
        check_fail "ProxyNode $node: config $got_config requesting $got_requested, expected $config requesting $requested"
    elif [[ $active == "$requested" && $on_fallback != true ]]; then
        pass "ProxyNode $node: $config runs $active as requested"
    elif [[ $active == "$fallback" && $on_fallback == true && -n $reason ]]; then
        pass "ProxyNode $node: $config requested $requested, runs fallback $active ($reason)"
        if kubectl get events -n default --field-selector "reason=FallbackActive,involvedObject.name=$node" -o name | grep -q .; then
            pass "Event FallbackActive recorded on Node $node"
        else
            check_fail "no FallbackActive Event on Node $node"
        fi
    else
        check_fail "ProxyNode $node: active $active (fallbackActive=$on_fallback, reason \"$reason\"), expected $requested or fallback $fallback"
    fi
    ready=$(jp proxynode "$node" '{.status.conditions[?(@.type=="Ready")].status}')
    [[ $ready == True ]] || check_fail "ProxyNode $node: Ready=$ready"
}
# Wait until every agent has published a status with a Ready condition.
for node in "$control_plane" "$pool_worker" "$plain_worker"; do
    retry 60 field_is proxynode "$node" '{.status.conditions[?(@.type=="Ready")].status}' True || true
done
expect_node "$control_plane" default nftables iptables
expect_node "$plain_worker" default nftables iptables
expect_node "$pool_worker" ipvs-pool ipvs nftables
kubectl get proxynode "$pool_worker" -o yaml

# The fallback shows in the ProxyConfig status too.
if [[ $(jp proxynode "$pool_worker" '{.status.fallbackActive}') == true ]]; then
    if retry 30 field_is proxyconfig ipvs-pool '{.status.nodesOnFallback}' 1; then
        pass "ProxyConfig ipvs-pool reports 1 node on fallback"
    else
        check_fail "ProxyConfig ipvs-pool: nodesOnFallback $(jp proxyconfig ipvs-pool '{.status.nodesOnFallback}'), expected 1"
    fi
fi

if [[ $failures -gt 0 ]]; then
    die "$failures check(s) failed"
fi
echo "kind-e2e: all checks passed"
