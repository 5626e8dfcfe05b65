//! The two forms of an [`Explanation`]: text for a terminal, one JSON document for
//! tools. Both say the same things.

use std::fmt::Write as _;

use serde_json::{json, Value};
use switchyard_conntrack::Flow;
use switchyard_model::{
    explain::EndpointRole, FamilyPlan, MasqueradeSources, ServicePortPlan, Target, VipKind,
};

use super::Explanation;

fn kind_text(kind: VipKind) -> &'static str {
    match kind {
        VipKind::ClusterIp => "cluster IP",
        VipKind::ExternalIp => "external IP",
        VipKind::LoadBalancer => "load-balancer IP",
    }
}

fn target_json(t: &Target) -> Value {
    match t {
        Target::Endpoints(b) => json!(b
            .iter()
            .map(|b| json!({
                "endpoint": b.to_string(), "local": b.local
            }))
            .collect::<Vec<_>>()),
        Target::Drop => json!("DROP"),
        Target::Reject => json!("REJECT"),
    }
}

fn masquerade_text(f: &FamilyPlan) -> String {
    let cluster = match f.masquerade.cluster_ips {
        MasqueradeSources::All => "every source (masqueradeAll)",
        MasqueradeSources::OutsideClusterCidrs => "sources outside the cluster CIDRs",
        MasqueradeSources::None => "none (no cluster CIDR known)",
    };
    let external = if f.masquerade.external {
        "masqueraded (externalTrafficPolicy: Cluster)"
    } else {
        "client address kept (externalTrafficPolicy: Local)"
    };
    format!("cluster IPs: {cluster}; external traffic: {external}; hairpin always")
}

fn family_json(f: &FamilyPlan) -> Value {
    json!({
        "family": f.family.to_string(),
        "vips": f.vips().map(|v| json!({"address": v.addr, "kind": kind_text(v.kind)})).collect::<Vec<_>>(),
        "nodePort": f.node_port,
        "internal": target_json(&f.internal),
        "external": target_json(&f.external),
        "shortCircuit": f.short_circuit.as_ref().map(|b| b.iter().map(ToString::to_string).collect::<Vec<_>>()),
        "masquerade": masquerade_text(f),
        "firewall": f.firewall.as_ref().map(|fw| fw.allowed.iter().map(ToString::to_string).collect::<Vec<_>>()),
        "affinitySeconds": f.affinity,
    })
}

fn plan_json(p: &ServicePortPlan) -> Value {
    json!({
        "id": p.id,
        "protocol": p.protocol.as_str(),
        "port": p.port,
        "families": p.families.iter().map(family_json).collect::<Vec<_>>(),
        "healthCheckNodePort": p.health_check.as_ref().map(|h| json!({
            "nodePort": h.node_port,
            "localReadyEndpoints": h.local_ready_ips,
        })),
    })
}

fn endpoint_json(e: &EndpointRole) -> Value {
    json!({
        "endpoint": e.endpoint.to_string(),
        "local": e.endpoint.local,
        "ready": e.endpoint.ready,
        "serving": e.endpoint.serving,
        "terminating": e.endpoint.terminating,
        "internal": e.internal.to_string(),
        "external": e.external.to_string(),
    })
}

/// Conntrack entries printed one by one in the text report.
const SHOWN_FLOWS: usize = 10;

/// The backend that answered a flow (its reply's source).
fn reply_source(f: &Flow) -> String {
    std::net::SocketAddr::new(f.reply.src, f.reply.src_port).to_string()
}

fn flow_text(f: &Flow) -> String {
    let proto = f.protocol().map_or_else(
        || f.original.protocol.to_string(),
        |p| p.as_str().to_string(),
    );
    let ep = |ip: std::net::IpAddr, port: u16| std::net::SocketAddr::new(ip, port).to_string();
    format!(
        "{proto} {} -> {}, reply from {}",
        ep(f.original.src, f.original.src_port),
        ep(f.original.dst, f.original.dst_port),
        ep(f.reply.src, f.reply.src_port)
    )
}

/// The JSON document.
pub fn json(e: &Explanation) -> Value {
    let kernel = match &e.engine.inspection {
        Ok(i) => json!({
            "owner": i.owner,
            "objects": i.objects.iter().map(|o| json!({"kind": o.kind, "name": o.name, "detail": o.detail})).collect::<Vec<_>>(),
            "agrees": i.agrees(),
            "disagreements": i.disagreements,
        }),
        Err(why) => json!({ "error": why }),
    };
    json!({
        "node": e.node,
        "input": e.input,
        "servicePort": e.name.to_string(),
        "plan": plan_json(&e.port.plan),
        "endpoints": e.port.endpoints.iter().map(endpoint_json).collect::<Vec<_>>(),
        "engine": {
            "mode": e.engine.mode.map(|m| m.to_string()),
            "activeFrom": e.engine.how,
            "kernel": kernel,
        },
        "conntrack": match &e.conntrack {
            Ok(flows) => json!(flows.iter().map(flow_text).collect::<Vec<_>>()),
            Err(why) => json!({ "error": why }),
        },
        "from": e.from.as_ref().map(|f| json!({
            "source": f.source,
            "class": f.class.to_string(),
            "destinations": f.outcomes.iter().map(|(d, o)| json!({
                "destination": d.to_string(), "reaches": o.reaches(), "outcome": o.to_string()
            })).collect::<Vec<_>>(),
        })),
        "ok": e.failure.is_none(),
        "reason": e.failure,
    })
}

fn target_text(t: &Target) -> String {
    match t {
        Target::Endpoints(_) => t.to_string(),
        Target::Drop => "DROP (no endpoint this policy may use)".to_string(),
        Target::Reject => "REJECT (no ready endpoint)".to_string(),
    }
}

fn plan_text(out: &mut String, p: &ServicePortPlan) {
    for f in &p.families {
        let mut vips: Vec<String> = f
            .vips()
            .map(|v| format!("{} ({})", v.addr, kind_text(v.kind)))
            .collect();
        if let Some(np) = f.node_port {
            vips.push(format!("NodePort {np}"));
        }
        let _ = writeln!(out, "  {}:", f.family);
        let _ = writeln!(out, "    addresses:        {}", vips.join(", "));
        let _ = writeln!(out, "    internal target:  {}", target_text(&f.internal));
        let _ = writeln!(out, "    external target:  {}", target_text(&f.external));
        if let Some(b) = &f.short_circuit {
            let list: Vec<String> = b.iter().map(ToString::to_string).collect();
            let _ = writeln!(
                out,
                "    short circuit:    {} (pods and node to external addresses)",
                list.join(", ")
            );
        }
        let _ = writeln!(out, "    masquerade:       {}", masquerade_text(f));
        if let Some(fw) = &f.firewall {
            let list: Vec<String> = fw.allowed.iter().map(ToString::to_string).collect();
            let _ = writeln!(
                out,
                "    firewall:         LB IPs accept only {}",
                list.join(", ")
            );
        }
        match f.affinity {
            Some(s) => {
                let _ = writeln!(out, "    affinity:         ClientIP, {s} s");
            }
            None => {
                let _ = writeln!(out, "    affinity:         none");
            }
        }
    }
    if let Some(h) = &p.health_check {
        let ips: Vec<String> = h.local_ready_ips.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "  health check node port {} (local ready endpoints: {})",
            h.node_port,
            if ips.is_empty() {
                "none".to_string()
            } else {
                ips.join(", ")
            }
        );
    }
}

/// The text form.
pub fn text(e: &Explanation) -> String {
    let mut out = String::new();
    let p = &e.port.plan;
    let _ = writeln!(
        out,
        "service port {} (id {}), node {}, from {}",
        e.name, p.id, e.node, e.input
    );
    let _ = writeln!(out, "\nplan");
    plan_text(&mut out, p);
    let _ = writeln!(out, "\nendpoints");
    if e.port.endpoints.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for r in &e.port.endpoints {
        let _ = writeln!(
            out,
            "  {:<24} {:<6} internal: {:<40} external: {}",
            r.endpoint.to_string(),
            if r.endpoint.local { "local" } else { "remote" },
            r.internal.to_string(),
            r.external
        );
    }
    let mode = e.engine.mode.map_or("?".to_string(), |m| m.to_string());
    let _ = writeln!(
        out,
        "\nkernel: {mode} engine (active engine from {})",
        e.engine.how
    );
    match &e.engine.inspection {
        Err(why) => {
            let _ = writeln!(out, "  cannot read: {why}");
        }
        Ok(i) => {
            for o in &i.objects {
                let _ = writeln!(out, "  {o}");
            }
            if i.agrees() {
                let _ = writeln!(out, "  kernel and plan agree");
            } else {
                let _ = writeln!(out, "  kernel and plan DISAGREE:");
                for d in &i.disagreements {
                    let _ = writeln!(out, "    - {d}");
                }
            }
        }
    }
    match &e.conntrack {
        Err(why) => {
            let _ = writeln!(out, "\nconntrack: cannot read: {why}");
        }
        Ok(flows) => {
            let n = match flows.len() {
                1 => "1 entry".to_string(),
                n => format!("{n} entries"),
            };
            let _ = writeln!(out, "\nconntrack: {n} to the port's addresses");
            // Per backend, then the first few: a busy port has thousands (`-o json`
            // lists every one).
            let mut per_backend: std::collections::BTreeMap<String, usize> = Default::default();
            for f in flows {
                *per_backend.entry(reply_source(f)).or_default() += 1;
            }
            if flows.len() > SHOWN_FLOWS {
                for (backend, count) in &per_backend {
                    let _ = writeln!(out, "  {count:>6} replied by {backend}");
                }
            }
            for f in flows.iter().take(SHOWN_FLOWS) {
                let _ = writeln!(out, "  {}", flow_text(f));
            }
            if flows.len() > SHOWN_FLOWS {
                let _ = writeln!(
                    out,
                    "  ... and {} more (-o json lists them all)",
                    flows.len() - SHOWN_FLOWS
                );
            }
        }
    }
    if let Some(f) = &e.from {
        let _ = writeln!(out, "\nfrom {} ({})", f.source, f.class);
        for (d, o) in &f.outcomes {
            let _ = writeln!(out, "  to {d}: {o}");
        }
    }
    let _ = match &e.failure {
        None => writeln!(out, "\nverdict: OK"),
        Some(why) => writeln!(out, "\nverdict: FAIL: {why}"),
    };
    out
}
