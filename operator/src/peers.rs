//! Peer names: which Pod, Service or Node has the address of an endpoint a
//! report names (`closeWait.topPeers`, `portPressure.topDestinations`), so
//! that verdicts, Events, annotations and policy status say
//! `pod demo/leaky-client` where the agent saw `10.88.0.6`.
//!
//! Only the endpoints of pods (and nodes: a node report's evidence is named
//! the same way, but for its loopback peers) whose verdict is Warning or
//! Leaking are named,
//! and each source is read where it scales:
//! - **Services** are few: a cache of their ClusterIPs and ports (the
//!   reflector keeps nothing else), searched per endpoint.
//! - **Nodes**: a cache of their names and InternalIP/ExternalIP addresses.
//! - **Pods** are many, and a cluster-wide cache of their IPs is what this
//!   design avoids: an address is looked up on its own with the
//!   `status.podIP` field selector (metadata only, served from the API
//!   server's watch cache), at most [`MAX_POD_LOOKUPS_PER_RECONCILE`] per
//!   reconcile, and the answer is kept for [`POD_NAME_TTL`].
//!
//! The plan asks for names only where the verdict has none, and afresh for
//! each Event (`plan::Plan::unnamed_peers`), so a pod that keeps leaking
//! costs no lookup between its Events. A lookup that fails leaves the
//! endpoint as it is (the verdict keeps the name it had); it never delays
//! or blocks the verdict. An address is called
//! `External` only when the Service and Node caches are complete and no pod
//! has it. Names are as fresh as the verdict they were written with: IPs are
//! reused, so the name of a peer that has gone may be its successor's.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use connhealth_crds::health::{NamedPeer, PeerKind};

use crate::cache::start_cache;
use crate::evaluate::Subject;
use crate::plan::{Plan, ReportInput};
use futures::FutureExt;
use k8s_openapi::api::core::v1::{Node, NodeStatus, Pod, Service, ServicePort, ServiceSpec};
use kube::api::{ListParams, PartialObjectMeta};
use kube::runtime::reflector::{self, Store};
use kube::{Api, Client, ResourceExt};

/// Pod lookups (API requests) one reconcile may make; further endpoints
/// are named by a later reconcile.
pub const MAX_POD_LOOKUPS_PER_RECONCILE: usize = 16;

/// How long the answer of a pod lookup (a pod, or none) is used.
pub const POD_NAME_TTL: Duration = Duration::from_secs(60);

/// Pod lookups remembered at most; expired ones are dropped first.
const MAX_REMEMBERED_POD_LOOKUPS: usize = 4096;

/// Names of endpoints, by endpoint as the report writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerNames(HashMap<String, NamedPeer>);

impl PeerNames {
    /// The name of `endpoint`, if known.
    pub fn get(&self, endpoint: &str) -> Option<&NamedPeer> {
        self.0.get(endpoint)
    }

    /// Adds a name (replacing one of the same endpoint).
    pub fn insert(&mut self, named: NamedPeer) {
        self.0.insert(named.endpoint.clone(), named);
    }

    /// `endpoint` in words: its name when known, else the endpoint.
    pub fn describe(&self, endpoint: &str) -> String {
        describe(endpoint, self.get(endpoint))
    }

    /// These names, and for endpoints without one, the name in `earlier`
    /// (what a previous verdict said): a lookup that fails keeps a name.
    pub fn or_earlier(&self, earlier: &[NamedPeer]) -> PeerNames {
        let mut merged = self.clone();
        for named in earlier {
            merged.0.entry(named.endpoint.clone()).or_insert_with(|| named.clone());
        }
        merged
    }

    /// Whether no endpoint is named.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Keeps only the names for which `keep` is true.
    pub fn retain(&mut self, keep: impl Fn(&NamedPeer) -> bool) {
        self.0.retain(|_, named| keep(named));
    }
}

/// An endpoint in words: its name ([`NamedPeer::describe`]) when known,
/// else the endpoint.
pub fn describe(endpoint: &str, named: Option<&NamedPeer>) -> String {
    named.map_or_else(|| endpoint.to_owned(), NamedPeer::describe)
}

/// The address and port of an endpoint as reports write it: `10.0.0.9`,
/// `10.0.0.5:5432`, `fd00::9`, `[fd00::5]:443`. IPv4-mapped IPv6
/// addresses are read as IPv4.
pub fn parse_endpoint(endpoint: &str) -> Option<(IpAddr, Option<u16>)> {
    let (ip, port) = match endpoint.parse::<SocketAddr>() {
        Ok(addr) => (addr.ip(), Some(addr.port())),
        Err(_) => (endpoint.parse::<IpAddr>().ok()?, None),
    };
    Some((ip.to_canonical(), port))
}

/// What a pod lookup found for an address.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PodAtAddress {
    /// One pod: `namespace/name` and its workload.
    One { name: String, workload: Option<String> },
    /// No pod.
    None,
    /// Several pods (an address being handed over): no name is given.
    Several,
}

/// The caches and lookups that name endpoints; shared by every reconcile.
pub struct PeerDirectory {
    client: Client,
    services: Store<Service>,
    nodes: Store<Node>,
    pods: Mutex<HashMap<IpAddr, (Instant, PodAtAddress)>>,
}

impl PeerDirectory {
    /// Starts the Service and Node caches (tasks that run as long as the
    /// process) and returns the directory.
    pub fn start(client: Client) -> Self {
        let services = start_cache("Services to name peers", Api::all(client.clone()), keep_cluster_ips);
        let nodes = start_cache("Nodes to name peers", Api::all(client.clone()), keep_addresses);
        Self::new(client, services, nodes)
    }

    /// A directory on caches someone else fills.
    pub fn new(client: Client, services: Store<Service>, nodes: Store<Node>) -> Self {
        Self { client, services, nodes, pods: Mutex::new(HashMap::new()) }
    }

    /// Names as many of `endpoints` as it can, with at most
    /// [`MAX_POD_LOOKUPS_PER_RECONCILE`] pod lookups. Endpoints it cannot
    /// name (not an address, a lookup failed or was not made) are left out.
    pub async fn name(&self, endpoints: &BTreeSet<&str>) -> PeerNames {
        let mut names = PeerNames::default();
        let mut lookups = 0;
        for endpoint in endpoints {
            let Some((ip, port)) = parse_endpoint(endpoint) else { continue };
            let named = |kind, name: Option<String>| NamedPeer {
                endpoint: (*endpoint).to_owned(),
                kind,
                name,
                workload: None,
                port_name: None,
            };
            if ip.is_loopback() {
                names.insert(named(PeerKind::Loopback, None));
                continue;
            }
            if let Some(service) = self.services.find(|s| has_cluster_ip(s, ip)) {
                let port_name = port.and_then(|p| service_port_name(&service, p));
                names.insert(NamedPeer { port_name, ..named(PeerKind::Service, Some(namespaced_name(&*service))) });
                continue;
            }
            if let Some(node) = self.nodes.find(|n| has_address(n, ip)) {
                names.insert(named(PeerKind::Node, Some(node.name_any())));
                continue;
            }
            let at = match self.remembered_pod(ip) {
                Some(at) => at,
                None if lookups < MAX_POD_LOOKUPS_PER_RECONCILE => {
                    lookups += 1;
                    match self.look_up_pod(ip).await {
                        Ok(at) => at,
                        Err(error) => {
                            tracing::warn!(
                                address = %ip,
                                error = %connhealth_runtime::error_chain(&error),
                                "looking up the pod of a peer's address failed; it stays unnamed"
                            );
                            continue;
                        }
                    }
                }
                None => continue,
            };
            match at {
                PodAtAddress::One { name, workload } => {
                    names.insert(NamedPeer { workload, ..named(PeerKind::Pod, Some(name)) });
                }
                PodAtAddress::None if self.caches_complete() => names.insert(named(PeerKind::External, None)),
                PodAtAddress::None | PodAtAddress::Several => {}
            }
        }
        names
    }

    /// Names the endpoints `plan` asks for ([`Plan::unnamed_peers`]) into
    /// the reports (of `subject`s) they belong to; whether it named any
    /// (then plan again with the names). A node's loopback peers are left
    /// unnamed: the name says "the pod itself".
    pub async fn name_for(&self, subject: Subject, plan: &Plan, reports: &mut [ReportInput]) -> bool {
        if plan.unnamed_peers.is_empty() {
            return false;
        }
        let endpoints: BTreeSet<&str> = plan.unnamed_peers.values().flatten().map(String::as_str).collect();
        let mut names = self.name(&endpoints).await;
        if subject == Subject::Node {
            names.retain(|named| named.kind != PeerKind::Loopback);
        }
        if names.is_empty() {
            return false;
        }
        for report in reports.iter_mut().filter(|r| plan.unnamed_peers.contains_key(&r.name)) {
            report.peers = names.clone();
        }
        true
    }

    /// Whether the Service and Node caches hold every object: until then
    /// an address no pod has may still be a Service's or a Node's.
    fn caches_complete(&self) -> bool {
        let listed = |ready: Option<Result<(), reflector::store::WriterDropped>>| ready.is_some_and(|r| r.is_ok());
        listed(self.services.wait_until_ready().now_or_never()) && listed(self.nodes.wait_until_ready().now_or_never())
    }

    fn remembered_pod(&self, ip: IpAddr) -> Option<PodAtAddress> {
        let pods = self.pods.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        pods.get(&ip).filter(|(at, _)| at.elapsed() < POD_NAME_TTL).map(|(_, found)| found.clone())
    }

    /// One request: the pods (not on the host network, not finished) whose
    /// `status.podIP` is `ip`, metadata only, from the watch cache.
    async fn look_up_pod(&self, ip: IpAddr) -> Result<PodAtAddress, kube::Error> {
        let selector = format!("status.podIP={ip},spec.hostNetwork=false,status.phase!=Succeeded,status.phase!=Failed");
        let params = ListParams::default().fields(&selector).match_any();
        let found = Api::<Pod>::all(self.client.clone()).list_metadata(&params).await?;
        let at = match found.items.as_slice() {
            [] => PodAtAddress::None,
            [pod] => PodAtAddress::One { name: namespaced_name(pod), workload: workload(pod) },
            _ => PodAtAddress::Several,
        };
        let mut pods = self.pods.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if pods.len() >= MAX_REMEMBERED_POD_LOOKUPS {
            pods.retain(|_, (at, _)| at.elapsed() < POD_NAME_TTL);
        }
        if pods.len() < MAX_REMEMBERED_POD_LOOKUPS {
            pods.insert(ip, (Instant::now(), at.clone()));
        }
        Ok(at)
    }
}

/// What the Service cache keeps: name, namespace, ClusterIPs and ports.
fn keep_cluster_ips(service: &mut Service) {
    let spec = service.spec.take().unwrap_or_default();
    service.metadata = kube::api::ObjectMeta {
        name: service.metadata.name.take(),
        namespace: service.metadata.namespace.take(),
        resource_version: service.metadata.resource_version.take(),
        ..Default::default()
    };
    service.spec = Some(ServiceSpec {
        cluster_ip: spec.cluster_ip,
        cluster_ips: spec.cluster_ips,
        ports: spec.ports.map(|ports| {
            ports
                .into_iter()
                .map(|p| ServicePort { name: p.name, port: p.port, protocol: p.protocol, ..Default::default() })
                .collect()
        }),
        ..Default::default()
    });
    service.status = None;
}

/// What the Node cache keeps: the name and addresses.
fn keep_addresses(node: &mut Node) {
    let addresses = node.status.take().and_then(|s| s.addresses);
    node.metadata = kube::api::ObjectMeta {
        name: node.metadata.name.take(),
        resource_version: node.metadata.resource_version.take(),
        ..Default::default()
    };
    node.spec = None;
    node.status = Some(NodeStatus { addresses, ..Default::default() });
}

fn has_cluster_ip(service: &Service, ip: IpAddr) -> bool {
    let Some(spec) = &service.spec else { return false };
    spec.cluster_ip.iter().chain(spec.cluster_ips.iter().flatten()).any(|c| c.parse::<IpAddr>().is_ok_and(|c| c == ip))
}

/// The name of the Service's TCP port `port`, when it has one.
fn service_port_name(service: &Service, port: u16) -> Option<String> {
    let ports = service.spec.as_ref()?.ports.as_ref()?;
    ports
        .iter()
        .find(|p| p.port == i32::from(port) && p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
        .and_then(|p| p.name.clone())
        .filter(|name| !name.is_empty())
}

fn has_address(node: &Node, ip: IpAddr) -> bool {
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    addresses.into_iter().flatten().any(|a| {
        matches!(a.type_.as_str(), "InternalIP" | "ExternalIP") && a.address.parse::<IpAddr>().is_ok_and(|a| a == ip)
    })
}

fn namespaced_name(object: &impl ResourceExt) -> String {
    format!("{}/{}", object.namespace().unwrap_or_default(), object.name_any())
}

/// The workload that controls a pod, `Kind/name`: a ReplicaSet's Deployment
/// when the ReplicaSet's name is the Deployment's plus the pod's
/// `pod-template-hash` (as the Deployment controller names it), else the
/// controlling owner itself.
fn workload(pod: &PartialObjectMeta<Pod>) -> Option<String> {
    let owner = pod.owner_references().iter().find(|o| o.controller == Some(true))?;
    if owner.kind == "ReplicaSet"
        && let Some(hash) = pod.labels().get("pod-template-hash")
        && let Some(deployment) = owner.name.strip_suffix(&format!("-{hash}"))
    {
        return Some(format!("Deployment/{deployment}"));
    }
    Some(format!("{}/{}", owner.kind, owner.name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeAddress;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    #[test]
    fn endpoints_are_read_as_reports_write_them() {
        let v4 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(parse_endpoint("10.0.0.9"), Some((v4("10.0.0.9"), None)));
        assert_eq!(parse_endpoint("10.0.0.5:5432"), Some((v4("10.0.0.5"), Some(5432))));
        assert_eq!(parse_endpoint("fd00::9"), Some((v4("fd00::9"), None)));
        assert_eq!(parse_endpoint("[fd00::5]:443"), Some((v4("fd00::5"), Some(443))));
        assert_eq!(parse_endpoint("[::ffff:10.0.0.1]:80"), Some((v4("10.0.0.1"), Some(80))));
        assert_eq!(parse_endpoint("not an address"), None);
    }

    #[test]
    fn each_kind_is_described_with_its_endpoint() {
        let named = |kind, name: Option<&str>| NamedPeer {
            endpoint: "10.0.0.20:5432".into(),
            kind,
            name: name.map(Into::into),
            workload: None,
            port_name: None,
        };
        let pod = NamedPeer { workload: Some("Deployment/api".into()), ..named(PeerKind::Pod, Some("shop/api-1")) };
        assert_eq!(describe("10.0.0.20:5432", Some(&pod)), "pod shop/api-1 (10.0.0.20:5432, Deployment/api)");
        let service = NamedPeer { port_name: Some("postgres".into()), ..named(PeerKind::Service, Some("shop/db")) };
        assert_eq!(describe("10.0.0.20:5432", Some(&service)), "service shop/db port postgres (10.0.0.20:5432)");
        assert_eq!(describe("10.0.0.20:5432", Some(&named(PeerKind::Node, Some("n1")))), "node n1 (10.0.0.20:5432)");
        assert!(describe("10.0.0.20:5432", Some(&named(PeerKind::External, None))).contains("outside the cluster"));
        assert_eq!(describe("10.0.0.20:5432", None), "10.0.0.20:5432");
    }

    #[test]
    fn a_replica_sets_pod_names_its_deployment() {
        let mut pod = PartialObjectMeta::<Pod>::default();
        pod.metadata.labels = Some([("pod-template-hash".to_owned(), "7f9c".to_owned())].into());
        let owner = |kind: &str, name: &str| OwnerReference {
            kind: kind.into(),
            name: name.into(),
            controller: Some(true),
            ..Default::default()
        };
        pod.metadata.owner_references = Some(vec![owner("ReplicaSet", "web-7f9c")]);
        assert_eq!(workload(&pod).as_deref(), Some("Deployment/web"));
        // A ReplicaSet of its own (its name does not end in the hash).
        pod.metadata.owner_references = Some(vec![owner("ReplicaSet", "web")]);
        assert_eq!(workload(&pod).as_deref(), Some("ReplicaSet/web"));
        pod.metadata.owner_references = Some(vec![owner("StatefulSet", "db")]);
        assert_eq!(workload(&pod).as_deref(), Some("StatefulSet/db"));
        pod.metadata.owner_references = Some(vec![OwnerReference { controller: None, ..owner("Node", "n1") }]);
        assert_eq!(workload(&pod), None);
    }

    #[test]
    fn services_and_nodes_match_their_own_addresses_only() {
        let mut service = Service {
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.0.0.20".into()),
                cluster_ips: Some(vec!["10.0.0.20".into(), "fd00::20".into()]),
                ports: Some(vec![
                    ServicePort {
                        name: Some("dns".into()),
                        port: 53,
                        protocol: Some("UDP".into()),
                        ..Default::default()
                    },
                    ServicePort {
                        name: Some("dns-tcp".into()),
                        port: 53,
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    },
                ]),
                selector: Some([("app".to_owned(), "db".to_owned())].into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        keep_cluster_ips(&mut service);
        assert!(service.spec.as_ref().unwrap().selector.is_none(), "only what is read is kept");
        assert!(has_cluster_ip(&service, "fd00::20".parse().unwrap()));
        assert!(!has_cluster_ip(&service, "10.0.0.21".parse().unwrap()));
        assert_eq!(service_port_name(&service, 53).as_deref(), Some("dns-tcp"));
        assert_eq!(service_port_name(&service, 54), None);
        // A headless Service has no address.
        let headless = Service {
            spec: Some(ServiceSpec { cluster_ip: Some("None".into()), ..Default::default() }),
            ..Default::default()
        };
        assert!(!has_cluster_ip(&headless, "10.0.0.20".parse().unwrap()));

        let address = |type_: &str, address: &str| NodeAddress { type_: type_.into(), address: address.into() };
        let mut node = Node {
            status: Some(NodeStatus {
                addresses: Some(vec![address("Hostname", "10.1.0.9"), address("InternalIP", "10.1.0.5")]),
                ..Default::default()
            }),
            ..Default::default()
        };
        keep_addresses(&mut node);
        assert!(has_address(&node, "10.1.0.5".parse().unwrap()));
        assert!(!has_address(&node, "10.1.0.9".parse().unwrap()), "a Hostname entry is not an address");
    }
}
