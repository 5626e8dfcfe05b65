//! [`Conntrack`]: the conntrack table of the network namespace it was opened in, over
//! the netlink layer's ctnetlink client: lists flows, and deletes the ones matching
//! filters with one dump of the table (each flow decoded, matched and dropped as it
//! streams in, so a table of 100k+ flows costs no more memory than its stale part).

use switchyard_model::{ChangeSet, EngineError, IpFamily, NodeModel};
use switchyard_netlink::{
    ctnetlink::{Ctnetlink, Flow},
    NetlinkError, Netns,
};

use crate::filters::{stale_flow_filters, ConntrackFilter, FilterIndex};

/// A ctnetlink socket. Not shared between threads; open one per user.
pub struct Conntrack {
    ct: Ctnetlink,
}

impl Conntrack {
    /// Opens a ctnetlink socket in the calling thread's current network namespace.
    pub fn open() -> Result<Conntrack, NetlinkError> {
        Conntrack::open_in(&Netns::Current)
    }

    /// Opens a ctnetlink socket in `netns`.
    pub fn open_in(netns: &Netns) -> Result<Conntrack, NetlinkError> {
        Ok(Conntrack {
            ct: Ctnetlink::open(netns)?,
        })
    }

    /// Every flow of `family` in the table.
    pub fn flows(&mut self, family: IpFamily) -> Result<Vec<Flow>, NetlinkError> {
        let mut flows = Vec::new();
        self.ct.dump(Some(family), |flow| flows.push(flow))?;
        Ok(flows)
    }

    /// Deletes every flow (of any family) matching any of `filters`, with one dump of
    /// the table. Returns how many flows were deleted; a flow that disappeared between
    /// the dump and its delete is not counted and is no error.
    pub fn delete_matching(&mut self, filters: &[ConntrackFilter]) -> Result<usize, NetlinkError> {
        if filters.is_empty() {
            return Ok(0);
        }
        let index = FilterIndex::new(filters);
        let mut stale = Vec::new();
        self.ct.dump(None, |flow| {
            if index.matches(&flow) {
                stale.push(flow);
            }
        })?;
        self.delete(&stale)
    }

    /// Deletes `flows`, each identified by its original tuple, zone and id. Returns how
    /// many were deleted; flows already gone are skipped silently.
    pub fn delete(&mut self, flows: &[Flow]) -> Result<usize, NetlinkError> {
        self.ct.delete(flows)
    }

    /// What the runner's stale-flow cleaner does after a sync: deletes the UDP flows
    /// `changes` made stale now that `new` is applied (see [`stale_flow_filters`]).
    /// Returns how many were deleted; the error keeps the kernel's errno.
    pub fn clean_stale_flows(
        &mut self,
        changes: &ChangeSet,
        new: &NodeModel,
    ) -> Result<usize, EngineError> {
        let filters = stale_flow_filters(changes, new);
        self.delete_matching(&filters)
            .map_err(|e| match EngineError::from(e) {
                EngineError::Kernel { operation, source } => EngineError::Kernel {
                    operation: format!("deleting stale UDP conntrack flows: {operation}"),
                    source,
                },
                other => other,
            })
    }
}
