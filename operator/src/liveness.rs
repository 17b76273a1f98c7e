//! Which nodes' reports are current: each node's agent renews a Lease in the
//! release namespace, named after the node ([`connhealth_crds::names::agent_leases`]);
//! reports of a node whose Lease has run out (or that has none) get the
//! verdict `Unknown`, and their policies count them as unknown.
//!
//! The rule: a node is live from a renewal until `renewTime +
//! leaseDurationSeconds` (the agent's own duration, 40 s by default), as
//! [`LivenessBook::update`] sees it. The book is updated every
//! [`TICK`] from the Lease cache, so a node turns `Unknown` at most one tick
//! after its Lease runs out; only the nodes that changed are reported, and
//! the controller reconciles just the policies of namespaces with reports
//! of those nodes. Reconciles read the book, never the clock against the
//! Lease, so a report's liveness changes only together with that trigger.
//!
//! Until the Lease cache has been listed once the book is not ready and
//! reconciles wait: a replica that has just started must not call every
//! node dead.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;

/// How often the book is brought up to date.
pub const TICK: Duration = Duration::from_secs(2);

/// A node's Lease, as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentLease {
    /// Last renewal.
    pub renewed: Timestamp,
    /// How long a renewal is valid.
    pub duration: SignedDuration,
}

impl AgentLease {
    /// The node (Lease name) and its renewal, when the Lease has both a
    /// renewal time and a positive duration.
    pub fn from_lease(lease: &Lease) -> Option<(String, AgentLease)> {
        let name = lease.metadata.name.clone()?;
        let spec = lease.spec.as_ref()?;
        let renewed = spec.renew_time.as_ref()?.0;
        let seconds = spec.lease_duration_seconds.filter(|s| *s > 0)?;
        Some((name, AgentLease { renewed, duration: SignedDuration::from_secs(i64::from(seconds)) }))
    }

    /// Until when it keeps its node live.
    pub fn expires(&self) -> Timestamp {
        self.renewed.checked_add(self.duration).unwrap_or(Timestamp::MAX)
    }
}

/// A node's liveness at the last update.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NodeState {
    Live,
    /// Its Lease ran out at this time.
    Expired(Timestamp),
}

/// The liveness of every node with a Lease, as of the last
/// [`LivenessBook::update`].
#[derive(Debug, Default)]
pub struct LivenessBook {
    ready: bool,
    namespace: String,
    nodes: BTreeMap<String, NodeState>,
}

impl LivenessBook {
    /// An empty book (not ready) for Leases in `namespace`.
    pub fn new(namespace: &str) -> Self {
        Self { ready: false, namespace: namespace.to_owned(), nodes: BTreeMap::new() }
    }

    /// Whether the Lease cache was read at least once.
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Brings the book up to date with `leases` (node → its Lease) at `now`;
    /// returns the nodes whose liveness changed (became live, ran out,
    /// lost their Lease). The first update returns nothing: everything is
    /// evaluated then anyway.
    pub fn update(&mut self, leases: &HashMap<String, AgentLease>, now: Timestamp) -> Vec<String> {
        let next: BTreeMap<String, NodeState> = leases
            .iter()
            .map(|(node, lease)| {
                let state = if lease.expires() > now { NodeState::Live } else { NodeState::Expired(lease.expires()) };
                (node.clone(), state)
            })
            .collect();
        let first = !self.ready;
        self.ready = true;
        let changed = if first {
            Vec::new()
        } else {
            let mut changed: Vec<String> = next
                .iter()
                .filter(|(node, state)| {
                    let before = self.nodes.get(*node);
                    // Expired → expired at another time (renewed in between,
                    // unseen) is no change of liveness.
                    !matches!((before, state), (Some(NodeState::Expired(_)), NodeState::Expired(_)))
                        && before != Some(*state)
                })
                .map(|(node, _)| node.clone())
                .collect();
            changed.extend(self.nodes.keys().filter(|node| !next.contains_key(*node)).cloned());
            changed
        };
        self.nodes = next;
        changed
    }

    /// Nodes whose Lease has run out.
    pub fn expired(&self) -> usize {
        self.nodes.values().filter(|state| matches!(state, NodeState::Expired(_))).count()
    }

    /// Why the reports of `node` are not current, or `None` when its agent
    /// renews its Lease. The text is the same while the node stays so (no
    /// clock in it), so a verdict is not rewritten for it.
    pub fn stale_reason(&self, node: &str) -> Option<String> {
        match self.nodes.get(node) {
            Some(NodeState::Live) => None,
            Some(NodeState::Expired(at)) => Some(format!(
                "the connhealth agent on node {node} stopped renewing its Lease ({}/{node}): it ran out at {at}, so this report may be out of date",
                self.namespace
            )),
            None => Some(format!(
                "the connhealth agent on node {node} holds no Lease ({}/{node}): it is not running, or is older than this operator",
                self.namespace
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn lease(renewed: i64) -> AgentLease {
        AgentLease { renewed: ts(renewed), duration: SignedDuration::from_secs(40) }
    }

    #[test]
    fn a_node_is_live_for_one_lease_duration_after_each_renewal() {
        let mut book = LivenessBook::new("connhealth-system");
        assert!(!book.ready());
        let leases: HashMap<String, AgentLease> = [("a".to_owned(), lease(0)), ("b".to_owned(), lease(0))].into();
        assert_eq!(book.update(&leases, ts(10)), Vec::<String>::new(), "the first update reports nothing");
        assert!(book.ready());
        assert_eq!(book.stale_reason("a"), None);

        // b renews, a does not: a runs out at 40 s.
        let mut leases = leases;
        leases.insert("b".into(), lease(30));
        assert_eq!(book.update(&leases, ts(39)), Vec::<String>::new());
        assert_eq!(book.update(&leases, ts(40)), ["a"]);
        let reason = book.stale_reason("a").unwrap();
        assert!(reason.contains("node a stopped renewing its Lease (connhealth-system/a)"), "{reason}");
        assert!(reason.contains(&ts(40).to_string()), "{reason}");
        assert_eq!(book.update(&leases, ts(50)), Vec::<String>::new(), "no change while it stays out");
        assert_eq!(book.stale_reason("a"), Some(reason), "the same words while it stays out");

        // a comes back; b's Lease is deleted; c never had one.
        leases.insert("a".into(), lease(60));
        leases.remove("b");
        assert_eq!(book.update(&leases, ts(61)), ["a", "b"]);
        assert_eq!(book.stale_reason("a"), None);
        assert!(book.stale_reason("b").unwrap().contains("node b holds no Lease (connhealth-system/b)"));
        assert!(book.stale_reason("c").unwrap().contains("holds no Lease"));
    }

    #[test]
    fn leases_without_a_renewal_or_duration_are_not_read() {
        let mut lease: Lease = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "a" },
            "spec": { "holderIdentity": "a", "leaseDurationSeconds": 40 },
        }))
        .unwrap();
        assert_eq!(AgentLease::from_lease(&lease), None);
        let spec = lease.spec.as_mut().unwrap();
        spec.renew_time = Some(MicroTime(ts(0)));
        assert_eq!(AgentLease::from_lease(&lease), Some(("a".to_owned(), self::lease(0))));
        lease.spec.as_mut().unwrap().lease_duration_seconds = Some(0);
        assert_eq!(AgentLease::from_lease(&lease), None);
    }
}
