//! A namespace deleted between two sweeps is reported once and dropped, and
//! the scanner closes the socket and files it held (which would otherwise
//! keep the deleted namespace alive, reporting zeros forever).
//!
//! Alone in its test binary: it counts this process's open descriptors.

use connhealth_scan::discovery::{DiscoveryOptions, discover};
use connhealth_scan::scan::{ScanConfig, Scanner, Target};
use connhealth_scan::testing::*;

fn fd_links() -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

/// This sweep's targets among `ours`: what discovery finds now.
fn discovered(names: &[&str]) -> Vec<Target> {
    let d = discover(&DiscoveryOptions::default()).unwrap();
    names.iter().filter_map(|n| d.by_name(n)).map(Target::from_discovery).collect()
}

#[test]
fn deleted_namespace_is_reported_once_dropped_and_its_socket_closed() {
    if !can_run_privileged_test("deleted_namespace_is_reported_once_dropped_and_its_socket_closed") {
        return;
    }
    let mut doomed = TestNetns::new("gone");
    let stays = TestNetns::new("stays");
    let (id, stays_id) = (doomed.id(), stays.id());
    let names = [doomed.name.clone(), stays.name.clone()];
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    // An nsfs file opened through its bind mount reads back as that path.
    let ns_link = doomed.path.to_string_lossy().into_owned();

    let mut scanner = Scanner::new(ScanConfig::default());
    let before = fd_links();
    let r1 = scanner.sweep(&discovered(&names));
    assert!(r1.errors.is_empty(), "{:?}", r1.errors);
    assert_eq!(r1.namespaces.len(), 2);
    assert!(r1.gone.is_empty());
    assert_eq!(scanner.cached(), {
        let mut v = vec![id, stays_id];
        v.sort();
        v
    });
    let during = fd_links();
    // Per namespace: its handle, its diag socket, sockstat, sockstat6, snmp,
    // netstat.
    assert_eq!(during.len(), before.len() + 2 * 6, "{during:?}");
    // Our own handle (TestNetns) and the scanner's.
    assert_eq!(during.iter().filter(|l| **l == ns_link).count(), 2);

    // Deleted between two sweeps: no process in it, its name removed, and
    // the test's own handle closed.
    doomed.delete();
    let r2 = scanner.sweep(&discovered(&names));
    assert_eq!(r2.namespaces.len(), 1);
    assert_eq!(r2.namespaces[0].inode, stays_id.ino);
    assert_eq!(r2.gone.len(), 1, "reported gone once");
    assert_eq!(r2.gone[0].inode, id.ino);
    assert_eq!(r2.gone[0].label.name.as_deref(), Some(doomed.name.as_str()));
    assert_eq!(scanner.cached(), [stays_id]);
    let after = fd_links();
    assert_eq!(after.len(), before.len() + 6 - 1, "doomed's 6 fds closed, and our own handle");
    assert!(!after.contains(&ns_link), "nothing pins the deleted namespace");

    let r3 = scanner.sweep(&discovered(&names));
    assert!(r3.gone.is_empty(), "reported only once");
    assert_eq!(r3.namespaces.len(), 1);
    drop(stays);
    let r4 = scanner.sweep(&discovered(&names));
    assert_eq!(r4.gone.len(), 1);
    assert!(scanner.cached().is_empty());
    // Back to where we started, minus the test's own two handles.
    assert_eq!(fd_links().len(), before.len() - 2);
}
