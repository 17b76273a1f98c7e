//! Captures the raw bytes of a legacy `TCPDIAG_GETSOCK` dump of a small,
//! known namespace and prints them as hex. Run once to refresh the golden
//! bytes in `src/sockdiag/tests.rs` (root only):
//!
//! ```text
//! cargo test -p connhealth-agent --test golden_capture -- --ignored --nocapture
//! ```

mod common;

use common::*;
use connhealth_agent::sockdiag::{StateSet, encode_legacy_request};

#[test]
#[ignore = "prints golden bytes; run by hand"]
fn capture_legacy_dump() {
    if !can_run_privileged_test("capture_legacy_dump") {
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
    let sock = ns.run(|| connhealth_agent::netns::DiagSocket::open().unwrap());
    let req = encode_legacy_request(StateSet::ALL, 1);
    sock.send(&req).unwrap();
    let mut buf = vec![0u8; 32768];
    let mut all = Vec::new();
    loop {
        let n = sock.recv(&mut buf).unwrap();
        all.extend_from_slice(&buf[..n]);
        // The last datagram ends with NLMSG_DONE (type 3).
        let mut at = 0;
        let mut done = false;
        while at + 16 <= n {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap());
            done |= ty == 3;
            at += (len + 3) & !3;
        }
        if done {
            break;
        }
    }
    println!("request: {}", hex(&req));
    println!("reply ({} bytes):", all.len());
    for chunk in all.chunks(32) {
        println!("{}", hex(chunk));
    }
    println!("ss:\n{}", run("ip", &["netns", "exec", &ns.name, "ss", "-tanieH"]));
    drop((l4, l6, est, cw));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
