//! [`Claims`]: kernel objects several service ports may ask for (an address that is
//! the cluster IP of one Service and the external IP of another, a node address and
//! port that is a NodePort and also an external IP's port), and which claim the kernel
//! holds. The winner is the claim of lowest rank (service IPs before NodePorts, as
//! upstream's dispatch order), then of the first service port by name: a pure function
//! of the claims, so a full sync and any sequence of partial ones agree.

use std::collections::BTreeMap;

use switchyard_model::ServicePortName;

/// Who claims an object: its rank (lower wins), then the service port's name.
pub type Claimant = (u8, ServicePortName);

/// Every claim on objects of type `K`, with the value each claimant wants.
#[derive(Clone, Debug)]
pub struct Claims<K: Ord, V> {
    by_key: BTreeMap<K, BTreeMap<Claimant, V>>,
}

impl<K: Ord, V> Default for Claims<K, V> {
    fn default() -> Self {
        Claims {
            by_key: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone, V> Claims<K, V> {
    pub fn claim(&mut self, key: K, claimant: Claimant, value: V) {
        self.by_key.entry(key).or_default().insert(claimant, value);
    }

    pub fn release(&mut self, key: &K, claimant: &Claimant) {
        if let Some(claims) = self.by_key.get_mut(key) {
            claims.remove(claimant);
            if claims.is_empty() {
                self.by_key.remove(key);
            }
        }
    }

    /// The value the kernel holds for `key`: the winning claim's.
    pub fn winner(&self, key: &K) -> Option<&V> {
        self.by_key.get(key)?.values().next()
    }

    /// Every key with its winning value, in key order.
    pub fn winners(&self) -> impl Iterator<Item = (&K, &V)> {
        self.by_key
            .iter()
            .filter_map(|(k, claims)| claims.values().next().map(|v| (k, v)))
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    pub fn contains(&self, key: &K) -> bool {
        self.by_key.contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_model::test_util::spn;

    #[test]
    fn lowest_rank_then_first_name_wins_whatever_the_order() {
        let mut c: Claims<u32, &str> = Claims::default();
        c.claim(1, (1, spn("a", "nodeport", "")), "nodeport");
        c.claim(1, (0, spn("b", "vip", "")), "vip");
        c.claim(1, (0, spn("c", "vip", "")), "later vip");
        assert_eq!(c.winner(&1), Some(&"vip"));
        c.release(&1, &(0, spn("b", "vip", "")));
        assert_eq!(c.winner(&1), Some(&"later vip"));
        c.release(&1, &(0, spn("c", "vip", "")));
        c.release(&1, &(1, spn("a", "nodeport", "")));
        assert!(c.is_empty());
        assert_eq!(c.winner(&1), None);
    }
}
