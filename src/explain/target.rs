//! What `switchyard explain` is asked about: `namespace/name[:port]` or
//! `VIP:PORT[/PROTO]`, resolved to one service port of the node's model.

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Result};
use switchyard_model::{reach::Destination, NodeModel, Protocol, ServicePortName};

/// The command line's SERVICE | VIP:PORT[/PROTO].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Asked {
    Service {
        namespace: String,
        name: String,
        /// The port's name (or number, as text); `None`: the service's only port.
        port: Option<String>,
    },
    Address {
        addr: IpAddr,
        port: u16,
        protocol: Protocol,
    },
}

/// Parses SERVICE (`namespace/name[:port]`) or `VIP:PORT[/PROTO]` (`[v6]:PORT` for
/// IPv6; PROTO `tcp`, `udp` or `sctp`, default `tcp`).
pub fn parse(text: &str) -> Result<Asked> {
    let (addr_part, proto) = match text.rsplit_once('/') {
        Some((a, p)) if a.parse::<SocketAddr>().is_ok() => (a, Some(p)),
        _ => (text, None),
    };
    if let Ok(sock) = addr_part.parse::<SocketAddr>() {
        let protocol = match proto {
            None => Protocol::Tcp,
            Some(p) => match Protocol::parse(&p.to_ascii_uppercase()) {
                Some(p) => p,
                None => bail!("{text:?}: protocol {p:?}: expected tcp, udp or sctp"),
            },
        };
        return Ok(Asked::Address {
            addr: sock.ip(),
            port: sock.port(),
            protocol,
        });
    }
    let Some((namespace, rest)) = text.split_once('/') else {
        bail!("{text:?}: expected namespace/name[:port] or VIP:PORT[/PROTO]");
    };
    let (name, port) = match rest.split_once(':') {
        Some((n, p)) => (n, Some(p.to_string())),
        None => (rest, None),
    };
    if namespace.is_empty() || name.is_empty() || port.as_deref() == Some("") {
        bail!("{text:?}: expected namespace/name[:port] with no empty part");
    }
    Ok(Asked::Service {
        namespace: namespace.to_string(),
        name: name.to_string(),
        port,
    })
}

/// The service port `asked` names in `model`, and the destination asked about (for an
/// address).
pub fn resolve(model: &NodeModel, asked: &Asked) -> Result<(ServicePortName, Option<Destination>)> {
    match asked {
        Asked::Service {
            namespace,
            name,
            port,
        } => resolve_service(model, namespace, name, port.as_deref()).map(|n| (n, None)),
        Asked::Address {
            addr,
            port,
            protocol,
        } => resolve_address(model, *addr, *port, *protocol).map(|(n, d)| (n, Some(d))),
    }
}

fn resolve_service(
    model: &NodeModel,
    namespace: &str,
    name: &str,
    port: Option<&str>,
) -> Result<ServicePortName> {
    let ports: Vec<(&ServicePortName, u16)> = model
        .services
        .iter()
        .filter(|(n, _)| n.namespace == namespace && n.name == name)
        .map(|(n, p)| (n, p.port))
        .collect();
    if ports.is_empty() {
        bail!("service {namespace}/{name}: not found on this node (no such Service, not proxied, or no cluster IP)");
    }
    let listing = || {
        ports
            .iter()
            .map(|(n, p)| format!("{}({p}/{})", display_port(n), n.protocol.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen: Vec<&ServicePortName> = match port {
        None if ports.len() == 1 => vec![ports[0].0],
        None => bail!(
            "service {namespace}/{name} has several ports: name one as {namespace}/{name}:PORT ({})",
            listing()
        ),
        Some(p) => ports
            .iter()
            .filter(|(n, number)| n.port == p || number.to_string() == p)
            .map(|(n, _)| *n)
            .collect(),
    };
    match chosen.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!(
            "service {namespace}/{name} has no port {:?} (ports: {})",
            port.unwrap_or_default(),
            listing()
        ),
        _ => bail!(
            "service {namespace}/{name}: port {:?} is ambiguous (ports: {})",
            port.unwrap_or_default(),
            listing()
        ),
    }
}

fn display_port(n: &ServicePortName) -> &str {
    if n.port.is_empty() {
        "(unnamed)"
    } else {
        &n.port
    }
}

fn resolve_address(
    model: &NodeModel,
    addr: IpAddr,
    port: u16,
    protocol: Protocol,
) -> Result<(ServicePortName, Destination)> {
    for (name, plan) in model
        .services
        .iter()
        .filter(|(_, p)| p.protocol == protocol)
    {
        for d in switchyard_model::reach::destinations(model, plan) {
            if d.addr == addr && d.port == port {
                return Ok((name.clone(), d));
            }
        }
    }
    bail!(
        "{}/{}: no service port of this node has this address (cluster, external or load-balancer IP, or NodePort on a node address)",
        SocketAddr::new(addr, port),
        protocol.as_str()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_services_and_addresses() {
        assert_eq!(
            parse("default/web").unwrap(),
            Asked::Service {
                namespace: "default".into(),
                name: "web".into(),
                port: None
            }
        );
        assert_eq!(
            parse("default/web:http").unwrap(),
            Asked::Service {
                namespace: "default".into(),
                name: "web".into(),
                port: Some("http".into())
            }
        );
        assert_eq!(
            parse("172.30.0.1:80").unwrap(),
            Asked::Address {
                addr: "172.30.0.1".parse().unwrap(),
                port: 80,
                protocol: Protocol::Tcp
            }
        );
        assert_eq!(
            parse("[fd00::1]:53/udp").unwrap(),
            Asked::Address {
                addr: "fd00::1".parse().unwrap(),
                port: 53,
                protocol: Protocol::Udp
            }
        );
        for bad in [
            "web",
            "/web",
            "default/",
            "default/web:",
            "10.0.0.1:80/icmp",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    fn two_ports() -> NodeModel {
        use switchyard_model::test_util::{ep, model, service, spn};
        let http = service("web", &["172.30.0.1"], 80, vec![ep("10.0.0.5", 8080, true)]);
        let mut metrics = http.clone();
        metrics.name = spn("default", "web", "metrics");
        metrics.port = 9090;
        metrics.node_port = Some(30090);
        model(vec![http, metrics])
    }

    fn name_of(m: &NodeModel, text: &str) -> Result<String> {
        resolve(m, &parse(text)?).map(|(n, _)| n.port.to_string())
    }

    #[test]
    fn resolves_ports_by_name_number_and_address() {
        let m = two_ports();
        let several = name_of(&m, "default/web").unwrap_err().to_string();
        assert!(
            several.contains("several ports") && several.contains("metrics(9090/tcp)"),
            "{several}"
        );
        assert_eq!(name_of(&m, "default/web:http").unwrap(), "http");
        assert_eq!(name_of(&m, "default/web:9090").unwrap(), "metrics");
        assert!(name_of(&m, "default/web:grpc").is_err());
        assert!(name_of(&m, "default/nope").is_err());
        assert_eq!(name_of(&m, "172.30.0.1:80").unwrap(), "http");
        assert!(name_of(&m, "172.30.0.1:80/udp").is_err());
        // The NodePort on the node's address.
        let (name, dest) = resolve(&m, &parse("192.168.0.2:30090").unwrap()).unwrap();
        assert_eq!((name.port.as_str(), dest.unwrap().kind), ("metrics", None));
    }
}
