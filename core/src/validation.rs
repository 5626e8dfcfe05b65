//! Per-object validation. Every source runs these checks before an object enters
//! `ClusterState`; an object that fails is reported (object and field named), counted and
//! skipped, and nothing else is disturbed.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use switchyard_model::Protocol;

use crate::state::{Object, ObjectKey};

/// One problem with one field of one object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field}: {message}")]
pub struct InvalidObject {
    pub object: ObjectKey,
    /// JSON path of the offending field, e.g. `spec.ports[1].port`.
    pub field: String,
    pub message: String,
}

/// Checks an object; `Ok` means every field the proxy reads is usable.
pub fn validate(object: &Object) -> Result<(), InvalidObject> {
    let key = object.key();
    let bad = |field: String, message: String| InvalidObject {
        object: key.clone(),
        field,
        message,
    };
    if key.name.is_empty() {
        return Err(bad("metadata.name".into(), "missing".into()));
    }
    match object {
        Object::Service(svc) => validate_service(svc).map_err(|(f, m)| bad(f, m)),
        Object::EndpointSlice(slice) => validate_slice(slice).map_err(|(f, m)| bad(f, m)),
        Object::Node(node) => validate_node(node).map_err(|(f, m)| bad(f, m)),
        Object::ProxyConfig(pc) => pc
            .spec
            .effective()
            .map(|_| ())
            .map_err(|e| bad(format!("spec.{}", e.field), e.message)),
    }
}

type FieldError = (String, String);

fn ip(field: &str, s: &str) -> Result<IpAddr, FieldError> {
    s.trim()
        .parse()
        .map_err(|_| (field.to_string(), format!("{s:?} is not an IP address")))
}

fn port(field: &str, p: i32, allow_zero: bool) -> Result<(), FieldError> {
    let low = if allow_zero { 0 } else { 1 };
    if p < low || p > 65535 {
        return Err((
            field.to_string(),
            format!("{p} is out of range {low}..=65535"),
        ));
    }
    Ok(())
}

fn protocol(field: &str, p: Option<&str>) -> Result<(), FieldError> {
    let p = p.unwrap_or("TCP");
    Protocol::parse(p).map(|_| ()).ok_or_else(|| {
        (
            field.to_string(),
            format!("unknown protocol {p:?} (expected TCP, UDP or SCTP)"),
        )
    })
}

fn one_of(field: &str, value: Option<&str>, allowed: &[&str]) -> Result<(), FieldError> {
    match value {
        Some(v) if !allowed.contains(&v) => Err((
            field.to_string(),
            format!(
                "unknown value {v:?} (expected one of {})",
                allowed.join(", ")
            ),
        )),
        _ => Ok(()),
    }
}

fn validate_service(svc: &Service) -> Result<(), FieldError> {
    let Some(spec) = &svc.spec else {
        return Err(("spec".into(), "missing".into()));
    };
    one_of(
        "spec.type",
        spec.type_.as_deref(),
        &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"],
    )?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return Ok(());
    }
    let headless = matches!(spec.cluster_ip.as_deref(), Some("None"));
    if let Some(cip) = spec
        .cluster_ip
        .as_deref()
        .filter(|c| !c.is_empty() && !headless)
    {
        ip("spec.clusterIP", cip)?;
    }
    for (i, cip) in spec.cluster_ips.iter().flatten().enumerate() {
        if cip != "None" {
            ip(&format!("spec.clusterIPs[{i}]"), cip)?;
        }
    }
    if let (Some(first), Some(primary)) = (
        spec.cluster_ips.as_ref().and_then(|c| c.first()),
        spec.cluster_ip.as_ref(),
    ) {
        if first != primary {
            return Err((
                "spec.clusterIPs[0]".into(),
                format!("{first:?} differs from spec.clusterIP {primary:?}"),
            ));
        }
    }
    for (i, eip) in spec.external_ips.iter().flatten().enumerate() {
        ip(&format!("spec.externalIPs[{i}]"), eip)?;
    }
    one_of(
        "spec.externalTrafficPolicy",
        spec.external_traffic_policy.as_deref(),
        &["Cluster", "Local"],
    )?;
    one_of(
        "spec.internalTrafficPolicy",
        spec.internal_traffic_policy.as_deref(),
        &["Cluster", "Local"],
    )?;
    one_of(
        "spec.sessionAffinity",
        spec.session_affinity.as_deref(),
        &["None", "ClientIP"],
    )?;
    if let Some(t) = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
    {
        if !(1..=86400).contains(&t) {
            return Err((
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds".into(),
                format!("{t} is out of range 1..=86400"),
            ));
        }
    }
    for (i, r) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        r.trim().parse::<IpNet>().map_err(|_| {
            (
                format!("spec.loadBalancerSourceRanges[{i}]"),
                format!("{r:?} is not a CIDR"),
            )
        })?;
    }
    if let Some(p) = spec.health_check_node_port {
        port("spec.healthCheckNodePort", p, true)?;
    }
    let mut seen: Vec<(&str, Protocol, i32)> = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let f = |name: &str| format!("spec.ports[{i}].{name}");
        port(&f("port"), p.port, false)?;
        protocol(&f("protocol"), p.protocol.as_deref())?;
        if let Some(np) = p.node_port {
            port(&f("nodePort"), np, true)?;
        }
        match &p.target_port {
            Some(IntOrString::Int(t)) => port(&f("targetPort"), *t, false)?,
            Some(IntOrString::String(name)) if name.is_empty() || name.len() > 15 => {
                return Err((
                    f("targetPort"),
                    format!("{name:?} is not a valid port name"),
                ));
            }
            _ => {}
        }
        let name = p.name.as_deref().unwrap_or("");
        let proto = Protocol::parse(p.protocol.as_deref().unwrap_or("TCP")).expect("checked");
        if seen.iter().any(|(n, pr, _)| *n == name && *pr == proto) {
            return Err((f("name"), format!("duplicate port name {name:?}")));
        }
        seen.push((name, proto, p.port));
    }
    Ok(())
}

fn validate_slice(slice: &EndpointSlice) -> Result<(), FieldError> {
    let family = match slice.address_type.as_str() {
        "IPv4" => Some(false),
        "IPv6" => Some(true),
        "FQDN" => None,
        other => {
            return Err((
                "addressType".into(),
                format!("unknown address type {other:?} (expected IPv4, IPv6 or FQDN)"),
            ))
        }
    };
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        if let Some(n) = p.port {
            port(&format!("ports[{i}].port"), n, false)?;
        }
        protocol(&format!("ports[{i}].protocol"), p.protocol.as_deref())?;
    }
    let Some(v6) = family else { return Ok(()) };
    for (i, ep) in slice.endpoints.iter().flatten().enumerate() {
        let hints = ep.hints.as_ref();
        let zones = hints
            .and_then(|h| h.for_zones.as_ref())
            .into_iter()
            .flatten();
        let mut seen_zones: Vec<&str> = Vec::new();
        for (j, z) in zones.enumerate() {
            if z.name.is_empty() || seen_zones.contains(&z.name.as_str()) {
                return Err((
                    format!("endpoints[{i}].hints.forZones[{j}].name"),
                    format!("zone {:?} is empty or named twice", z.name),
                ));
            }
            seen_zones.push(&z.name);
        }
        let nodes = hints
            .and_then(|h| h.for_nodes.as_ref())
            .into_iter()
            .flatten();
        let mut seen_nodes: Vec<&str> = Vec::new();
        for (j, n) in nodes.enumerate() {
            if n.name.is_empty() || seen_nodes.contains(&n.name.as_str()) {
                return Err((
                    format!("endpoints[{i}].hints.forNodes[{j}].name"),
                    format!("node {:?} is empty or named twice", n.name),
                ));
            }
            seen_nodes.push(&n.name);
        }
        if ep.addresses.is_empty() {
            return Err((format!("endpoints[{i}].addresses"), "empty".into()));
        }
        for (j, a) in ep.addresses.iter().enumerate() {
            let field = format!("endpoints[{i}].addresses[{j}]");
            let addr = ip(&field, a)?;
            if addr.is_ipv6() != v6 {
                return Err((
                    field,
                    format!("{a:?} does not match addressType {}", slice.address_type),
                ));
            }
        }
    }
    Ok(())
}

fn validate_node(node: &Node) -> Result<(), FieldError> {
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    for (i, a) in addresses.iter().enumerate() {
        if a.type_ == "InternalIP" || a.type_ == "ExternalIP" {
            ip(&format!("status.addresses[{i}].address"), &a.address)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(yaml: &str) -> Object {
        Object::Service(Box::new(serde_yaml::from_str(yaml).unwrap()))
    }

    #[test]
    fn accepts_a_plain_service() {
        let s = service(
            "metadata: {name: a, namespace: n}\nspec: {clusterIP: 10.0.0.1, ports: [{port: 80, targetPort: http}]}",
        );
        validate(&s).unwrap();
    }

    #[test]
    fn names_the_bad_field() {
        let cases = [
            ("spec: {clusterIP: 10.0.0.x, ports: [{port: 80}]}", "spec.clusterIP"),
            ("spec: {clusterIP: 10.0.0.1, ports: [{port: 80}, {port: 70000, name: b}]}", "spec.ports[1].port"),
            ("spec: {clusterIP: 10.0.0.1, ports: [{port: 0}]}", "spec.ports[0].port"),
            ("spec: {clusterIP: 10.0.0.1, ports: [{port: 80, protocol: ICMP}]}", "spec.ports[0].protocol"),
            ("spec: {clusterIP: 10.0.0.1, ports: [{port: 80}], externalTrafficPolicy: Nearby}", "spec.externalTrafficPolicy"),
            ("spec: {clusterIP: 10.0.0.1, ports: [{port: 80}], loadBalancerSourceRanges: [nope]}", "spec.loadBalancerSourceRanges[0]"),
        ];
        for (spec, field) in cases {
            let err = validate(&service(&format!(
                "metadata: {{name: a, namespace: n}}\n{spec}"
            )))
            .unwrap_err();
            assert_eq!(err.field, field, "{spec}");
        }
    }

    #[test]
    fn zone_named_twice_in_hints_is_invalid() {
        let slice: EndpointSlice = serde_yaml::from_str(
            "metadata: {name: s, namespace: n}\naddressType: IPv4\nendpoints: [{addresses: [10.0.0.1], hints: {forZones: [{name: a}, {name: a}]}}]",
        )
        .unwrap();
        let err = validate(&Object::EndpointSlice(Box::new(slice))).unwrap_err();
        assert_eq!(err.field, "endpoints[0].hints.forZones[1].name");
    }

    #[test]
    fn slice_addresses_must_match_type() {
        let slice: EndpointSlice = serde_yaml::from_str(
            "metadata: {name: s, namespace: n}\naddressType: IPv4\nendpoints: [{addresses: ['fd00::1']}]",
        )
        .unwrap();
        let err = validate(&Object::EndpointSlice(Box::new(slice))).unwrap_err();
        assert_eq!(err.field, "endpoints[0].addresses[0]");
    }
}
