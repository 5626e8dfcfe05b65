//! What an engine reads back from the kernel for one service port, for `switchyard
//! explain`: the kernel objects it found (chains, rules, map elements, virtual servers,
//! BPF map entries) and where they differ from what the engine would write for the
//! port's plan. Each engine computes the difference itself, from its own encoding of
//! the plan, so "kernel and plan agree" means exactly "a sync of this plan would change
//! nothing for this port".

use std::fmt;

use crate::{engine::Owner, model::NodeModel, name::ServicePortName, plan::ServicePortPlan};

/// One kernel object of a service port, as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelObject {
    /// What kind of object: `chain`, `map element`, `rule`, `virtual server`,
    /// `real server`, `bpf map entry`...
    pub kind: String,
    /// Where it is: the table and chain, the map and key, the virtual server's address.
    pub name: String,
    /// What it holds, in the words of the engine's own tool (rule count, verdict,
    /// backends, flags).
    pub detail: String,
}

impl KernelObject {
    pub fn new(
        kind: impl Into<String>,
        name: impl Into<String>,
        detail: impl Into<String>,
    ) -> KernelObject {
        KernelObject {
            kind: kind.into(),
            name: name.into(),
            detail: detail.into(),
        }
    }
}

impl fmt::Display for KernelObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.name)?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

/// What the kernel holds for one service port in one engine's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortInspection {
    /// The kernel state read (see [`Owner`]).
    pub owner: Owner,
    /// Every object of the port found in the kernel.
    pub objects: Vec<KernelObject>,
    /// Each difference between the kernel and what the engine would write for the
    /// port's plan (missing, unexpected or different objects), in words.
    pub disagreements: Vec<String>,
}

impl PortInspection {
    pub fn new(owner: Owner) -> PortInspection {
        PortInspection {
            owner,
            ..PortInspection::default()
        }
    }

    /// The start of every engine's inspection of `port`: an empty inspection and the
    /// port's plan, or (`Err`) an inspection that already says the port is not in the
    /// model, to return as it is.
    pub fn of_port<'m>(
        owner: Owner,
        model: &'m NodeModel,
        port: &ServicePortName,
    ) -> Result<(PortInspection, &'m ServicePortPlan), PortInspection> {
        let mut out = PortInspection::new(owner);
        match model.services.get(port) {
            Some(plan) => Ok((out, plan)),
            None => {
                out.differs(format!("{port} is not in the model"));
                Err(out)
            }
        }
    }

    /// Whether the kernel holds exactly what the plan asks for.
    pub fn agrees(&self) -> bool {
        self.disagreements.is_empty()
    }

    pub fn found(&mut self, object: KernelObject) {
        self.objects.push(object);
    }

    pub fn differs(&mut self, what: impl Into<String>) {
        self.disagreements.push(what.into());
    }
}
