//! A namespace deleted between two sweeps is reported once and dropped, and
//! the scanner closes the socket and files it held (which would otherwise
//! keep the deleted namespace alive, reporting zeros forever). One deleted
//! between discovery and the sweep's first open of it is one clean error,
//! and gone from the next sweep.
//!
//! Alone in their test binary, one at a time ([`ONE_AT_A_TIME`]): they
//! count this process's open descriptors.

use connhealth_scan::discovery::{DiscoveryOptions, discover};
use connhealth_scan::scan::{ScanConfig, Scanner, Target};
use connhealth_scan::testing::*;

/// Held by each test: another test's descriptors would count as ours.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

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
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
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

#[test]
fn a_namespace_gone_between_discovery_and_open_is_one_clean_error() {
    if !can_run_privileged_test("a_namespace_gone_between_discovery_and_open_is_one_clean_error") {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut doomed = TestNetns::new("race");
    let stays = TestNetns::new("racestays");
    let names = [doomed.name.clone(), stays.name.clone()];
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let targets = discovered(&names);
    assert_eq!(targets.len(), 2, "both discovered");

    // Gone after discovery, before this scanner ever opened it.
    doomed.delete();
    let mut scanner = Scanner::new(ScanConfig::default());
    let before = fd_links();
    let r1 = scanner.sweep(&targets);
    assert_eq!(r1.namespaces.len(), 1, "the other namespace is scanned");
    assert_eq!(r1.namespaces[0].inode, stays.id().ino);
    assert_eq!(r1.errors.len(), 1, "{:?}", r1.errors);
    let error = &r1.errors[0];
    assert_eq!(error.category, "NetnsOpen", "{error:?}");
    assert!(error.message.contains("No such file or directory"), "one line that says why: {}", error.message);
    assert!(!error.message.contains('\n'), "{}", error.message);
    assert_eq!(error.missing_capability, None, "not a permission problem");
    assert_eq!(error.label.name.as_deref(), Some(doomed.name.as_str()));
    assert!(r1.gone.is_empty(), "never scanned, so never reported gone");
    // Nothing of it is held: only the other namespace's handle and files.
    assert_eq!(fd_links().len(), before.len() + 6, "{:?}", fd_links());

    // The next discovery no longer finds it: no error, nothing cached.
    let r2 = scanner.sweep(&discovered(&names));
    assert!(r2.errors.is_empty(), "{:?}", r2.errors);
    assert_eq!(r2.namespaces.len(), 1);
    assert_eq!(scanner.cached(), [stays.id()]);
}
