//! A legacy `TCPDIAG_GETSOCK` dump of a small, known namespace, captured
//! raw from the running kernel: the codec's parse of those bytes must give
//! exactly the states `ss` sees (so the golden bytes in
//! `src/sockdiag/tests.rs` still describe this kernel). To refresh the golden
//! bytes, print the capture as hex (root only):
//!
//! ```text
//! CONNHEALTH_PRINT_GOLDEN=1 cargo test -p connhealth-agent --test golden_capture -- --nocapture
//! ```

use connhealth_scan::aggregate::StateCounts;
use connhealth_scan::sockdiag::{Flow, StateSet, TcpState, encode_legacy_request, parse_datagram};
use connhealth_scan::testing::*;

/// `TCPDIAG_GETSOCK`: the legacy request, answered with messages of its type.
const TCPDIAG_GETSOCK: u16 = 18;

#[test]
fn live_legacy_dump_parses_to_what_ss_sees() {
    if !can_run_privileged_test("live_legacy_dump_parses_to_what_ss_sees") {
        return;
    }
    let ns = TestNetns::new("golden");
    let (l4, l6, est, cw) = ns.run(|| {
        let l4 = listen("127.0.0.1:7070");
        let l6 = listen("[::1]:7071");
        let est = established(&l6);
        let cw = close_wait(&l4);
        (l4, l6, est, cw)
    });
    std::thread::sleep(std::time::Duration::from_millis(50));
    let sock = ns.run(|| connhealth_scan::netns::DiagSocket::open().unwrap());
    let req = encode_legacy_request(StateSet::ALL, 1);
    sock.send(&req).unwrap();
    let mut buf = vec![0u8; 32768];
    let mut all = Vec::new();
    let mut parsed = StateCounts::default();
    loop {
        let n = sock.recv(&mut buf).unwrap();
        all.extend_from_slice(&buf[..n]);
        let (flow, _) = parse_datagram(&buf[..n], 1, TCPDIAG_GETSOCK, &mut |msg| {
            parsed.add(msg.state().expect("a known TCP state"));
        })
        .expect("the kernel's reply parses");
        if matches!(flow, Flow::Done) {
            break;
        }
    }
    let ss = ns.ss_counts();
    assert_eq!(parsed, ss, "parsed from the raw reply vs ss");
    assert_eq!(
        (parsed.get(TcpState::Listen), parsed.get(TcpState::CloseWait), parsed.get(TcpState::FinWait2)),
        (2, 1, 1),
        "{parsed:?}"
    );
    if std::env::var_os("CONNHEALTH_PRINT_GOLDEN").is_some() {
        println!("request: {}", hex(&req));
        println!("reply ({} bytes):", all.len());
        for chunk in all.chunks(32) {
            println!("{}", hex(chunk));
        }
        println!("ss:\n{}", run("ip", &["netns", "exec", &ns.name, "ss", "-tanieH"]));
    }
    drop((l4, l6, est, cw));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
