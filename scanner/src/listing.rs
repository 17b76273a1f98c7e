//! Listing: every socket of one namespace, one row each, as `ss -tanp`
//! prints them — for on-demand snapshots of one pod, never for sweeps
//! (a sweep keeps figures, not rows).
//!
//! One dump of the requested states, sorted (CLOSE_WAIT first, then by
//! state, local and peer address) and cut to a limit; then, for the rows
//! kept, the CLOSE_WAIT ages (one `tcp_info` lookup each: the time since
//! the socket's last ACK arrived, which is never longer than it has been in
//! CLOSE_WAIT) and the processes holding them ([`crate::owners`], over the
//! namespace's processes only).

#![forbid(unsafe_code)]

use std::cmp::Ordering;
use std::net::SocketAddr;
use std::time::Duration;

use crate::error::ScanError;
use crate::netns::DiagSocket;
use crate::owners::{Owners, OwnersOptions, find_owners};
use crate::scan::{Target, open_target};
use crate::sockdiag::{DumpMode, Dumper, SockId, StateSet, TcpState};

/// One socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketRow {
    /// Its state.
    pub state: TcpState,
    /// Local address and port.
    pub local: SocketAddr,
    /// Peer address and port.
    pub peer: SocketAddr,
    /// Bytes received and not read (`ss` Recv-Q).
    pub recv_queue: u32,
    /// Bytes sent and not acknowledged (`ss` Send-Q).
    pub send_queue: u32,
    /// CLOSE_WAIT only: how long at least it has been in CLOSE_WAIT; `None`
    /// when the kernel gave no `tcp_info` (or it closed meanwhile).
    pub close_wait_for: Option<Duration>,
    /// The process of the namespace that holds it, if any.
    pub pid: Option<u32>,
    inode: u32,
    id: SockId,
}

/// The sockets of one namespace.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// The rows kept (at most the limit), in order.
    pub rows: Vec<SocketRow>,
    /// Sockets in the requested states, kept or not.
    pub total: u64,
    /// The processes holding the kept rows.
    pub owners: Owners,
}

/// Lists the sockets in `states` of `target`'s namespace: at most `limit`
/// rows, with ages and holders found among `target`'s processes.
pub fn list_sockets(target: &Target, states: StateSet, limit: usize) -> Result<Listing, ScanError> {
    let handle = open_target(target)?;
    let socket =
        handle.run_in(DiagSocket::open_without_net_admin)?.map_err(|source| ScanError::DiagSocket { source })?;
    let mut dumper = Dumper::new(DumpMode::Auto);
    let mut rows = Vec::new();
    dumper.dump(&socket, states, |msg| {
        let Some(state) = msg.state() else { return };
        rows.push(SocketRow {
            state,
            local: msg.local(),
            peer: msg.remote(),
            recv_queue: msg.rqueue(),
            send_queue: msg.wqueue(),
            close_wait_for: None,
            pid: None,
            inode: msg.inode(),
            id: msg.sock_id(),
        });
    })?;
    let total = rows.len() as u64;
    rows.sort_by(row_order);
    rows.truncate(limit);

    for row in rows.iter_mut().filter(|r| r.state == TcpState::CloseWait) {
        row.close_wait_for = dumper.since_last_ack(&socket, &row.id)?;
    }
    let inodes: Vec<u64> = rows.iter().map(|r| u64::from(r.inode)).filter(|&ino| ino != 0).collect();
    let owners = find_owners(&OwnersOptions::default(), &inodes, &target.label.pids);
    for row in &mut rows {
        row.pid = owners.holders.get(&u64::from(row.inode)).copied();
    }
    Ok(Listing { rows, total, owners })
}

/// CLOSE_WAIT first (what a snapshot is usually for), then by state, local
/// and peer address.
fn row_order(a: &SocketRow, b: &SocketRow) -> Ordering {
    let rank = |r: &SocketRow| (r.state != TcpState::CloseWait, r.state);
    rank(a).cmp(&rank(b)).then_with(|| a.local.cmp(&b.local)).then_with(|| a.peer.cmp(&b.peer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    #[test]
    fn close_wait_rows_come_first_then_by_state_and_address() {
        let row = |state, local: &str, peer: &str| SocketRow {
            state,
            local: local.parse().unwrap(),
            peer: peer.parse().unwrap(),
            recv_queue: 0,
            send_queue: 0,
            close_wait_for: None,
            pid: None,
            inode: 0,
            id: SockId::new(local.parse().unwrap(), peer.parse().unwrap(), 0),
        };
        let mut rows = [
            row(TcpState::Listen, "0.0.0.0:80", "0.0.0.0:0"),
            row(TcpState::Established, "10.0.0.1:80", "10.0.0.9:5000"),
            row(TcpState::CloseWait, "10.0.0.1:80", "10.0.0.9:5002"),
            row(TcpState::CloseWait, "10.0.0.1:80", "10.0.0.9:5001"),
        ];
        rows.sort_by(row_order);
        let order: Vec<(TcpState, u16)> = rows.iter().map(|r| (r.state, r.peer.port())).collect();
        assert_eq!(
            order,
            [
                (TcpState::CloseWait, 5001),
                (TcpState::CloseWait, 5002),
                (TcpState::Established, 5000),
                (TcpState::Listen, 0)
            ]
        );
    }

    /// Real sockets in a real namespace: the rows equal what was made, the
    /// limit cuts after CLOSE_WAIT, the holder is this process.
    #[test]
    fn lists_a_namespaces_sockets_with_ages_and_holders() {
        if !testing::can_run_privileged_test("listing a namespace's sockets") {
            return;
        }
        let ns = testing::TestNetns::new("listing");
        // Three CLOSE_WAIT sockets (and their FIN_WAIT2 peers, and the
        // listener), held by this process.
        let held = ns.run(|| {
            let listener = testing::listen("127.0.0.1:0");
            let pairs: Vec<_> = (0..3).map(|_| testing::close_wait(&listener)).collect();
            (listener, pairs)
        });
        let mut target = ns.target();
        target.label.pids = vec![std::process::id()];
        assert!(
            testing::wait_until(Duration::from_secs(5), || ns.ss_counts().get(TcpState::CloseWait) == 3),
            "3 CLOSE_WAIT sockets"
        );

        let all = list_sockets(&target, StateSet::ALL, 1000).expect("listing");
        let close_wait: Vec<&SocketRow> = all.rows.iter().filter(|r| r.state == TcpState::CloseWait).collect();
        assert_eq!(close_wait.len(), 3, "{:?}", all.rows);
        assert_eq!(all.total as usize, all.rows.len());
        assert!(close_wait.iter().all(|r| r.close_wait_for.is_some()), "every CLOSE_WAIT socket is dated");
        let me = std::process::id();
        assert!(close_wait.iter().all(|r| r.pid == Some(me)), "held by this process: {close_wait:?}");

        let only = list_sockets(&target, StateSet::of(&[TcpState::CloseWait]), 2).expect("listing");
        assert_eq!((only.total, only.rows.len()), (3, 2));
        assert!(only.rows.iter().all(|r| r.state == TcpState::CloseWait));
        drop(held);
    }
}
