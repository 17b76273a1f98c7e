//! Codec tests on golden bytes: hand-built messages with a comment per
//! field, and a real dump captured once from kernel 6.18
//! (`tests/golden_capture.rs` prints it).

use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn collect(buf: &[u8], seq: u32, ty: u16) -> Result<(Flow, Vec<String>), ScanError> {
    let mut out = Vec::new();
    let (flow, n) = parse_datagram(buf, seq, ty, &mut |m| {
        out.push(format!(
            "{:?} {} -> {} rq={} ino={} cookie={} fam={}",
            m.state().unwrap(),
            m.local(),
            m.remote(),
            m.rqueue(),
            m.inode(),
            m.cookie(),
            m.family()
        ))
    })?;
    assert_eq!(n as usize, out.len());
    Ok((flow, out))
}

#[test]
fn legacy_request_bytes() {
    let req = encode_legacy_request(StateSet::ALL, 1);
    #[rustfmt::skip]
    let want: Vec<u8> = [
        // struct nlmsghdr
        &[0x4c, 0, 0, 0][..],       // nlmsg_len = 76 = 16 + 60
        &[18, 0],                   // nlmsg_type = TCPDIAG_GETSOCK
        &[0x01, 0x03],              // nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP (0x301)
        &[1, 0, 0, 0],              // nlmsg_seq = 1
        &[0, 0, 0, 0],              // nlmsg_pid = 0
        // struct inet_diag_req
        &[2],                       // idiag_family = AF_INET (ignored: dumps AF_UNSPEC)
        &[0],                       // idiag_src_len
        &[0],                       // idiag_dst_len
        &[0],                       // idiag_ext = no extensions
        &[0; 4],                    // id.idiag_sport, id.idiag_dport = any
        &[0; 16],                   // id.idiag_src = any
        &[0; 16],                   // id.idiag_dst = any
        &[0; 4],                    // id.idiag_if = any
        &[0xff; 8],                 // id.idiag_cookie = INET_DIAG_NOCOOKIE x2
        &[0xfe, 0x0f, 0, 0],        // idiag_states = bits 1..=11
        &[0; 4],                    // idiag_dbs
    ]
    .concat();
    assert_eq!(req, want);
    // As captured on the wire by tests/golden_capture.rs.
    assert_eq!(
        req,
        hex(
            "4c0000001200010301000000000000000200000000000000000000000000000000000000000000000000000000000000000000000000000000000000fffffffffffffffffe0f000000000000"
        )
    );
}

#[test]
fn family_request_bytes() {
    let req = encode_family_request(AF_INET6, StateSet::of(&[TcpState::CloseWait]), 7);
    #[rustfmt::skip]
    let want: Vec<u8> = [
        // struct nlmsghdr
        &[0x48, 0, 0, 0][..],       // nlmsg_len = 72 = 16 + 56
        &[20, 0],                   // nlmsg_type = SOCK_DIAG_BY_FAMILY
        &[0x01, 0x03],              // nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP
        &[7, 0, 0, 0],              // nlmsg_seq = 7
        &[0, 0, 0, 0],              // nlmsg_pid
        // struct inet_diag_req_v2
        &[10],                      // sdiag_family = AF_INET6
        &[6],                       // sdiag_protocol = IPPROTO_TCP
        &[0],                       // idiag_ext = none
        &[0],                       // pad
        &[0x00, 0x01, 0, 0],        // idiag_states = 1 << CLOSE_WAIT (8)
        &[0; 4],                    // id ports
        &[0; 32],                   // id addresses
        &[0; 4],                    // id.idiag_if
        &[0xff; 8],                 // id.idiag_cookie = NOCOOKIE
    ]
    .concat();
    assert_eq!(req, want);
}

#[test]
fn state_sets() {
    assert_eq!(StateSet::ALL.bits(), 0xffe);
    assert_eq!(StateSet::of(&TcpState::ALL), StateSet::ALL);
    let s = StateSet::of(&[TcpState::Listen, TcpState::SynRecv]);
    assert_eq!(s.bits(), (1 << 10) | (1 << 3));
    assert!(s.contains(TcpState::Listen) && !s.contains(TcpState::CloseWait));
    assert_eq!(TcpState::from_kernel(12), Some(TcpState::SynRecv));
    assert_eq!(TcpState::from_kernel(0), None);
    assert_eq!(TcpState::from_kernel(13), None);
    for (i, s) in TcpState::ALL.iter().enumerate() {
        assert_eq!(TcpState::from_kernel(i as u8 + 1), Some(*s));
    }
}

/// One hand-built `inet_diag_msg` reply, IPv4 CLOSE_WAIT.
#[rustfmt::skip]
fn hand_built_close_wait(seq: u32) -> Vec<u8> {
    let mut m: Vec<u8> = [
        // struct nlmsghdr
        &[0x58, 0, 0, 0][..],           // nlmsg_len = 88 = 16 + 72
        &[18, 0],                       // nlmsg_type = TCPDIAG_GETSOCK (the request's)
        &[0x02, 0],                     // nlmsg_flags = NLM_F_MULTI
        &seq.to_ne_bytes(),             // nlmsg_seq
        &[0x39, 0x30, 0, 0],            // nlmsg_pid = 12345
        // struct inet_diag_msg
        &[2],                           // idiag_family = AF_INET
        &[8],                           // idiag_state = CLOSE_WAIT
        &[0],                           // idiag_timer
        &[0],                           // idiag_retrans
        &[0x1f, 0x90],                  // id.idiag_sport = 8080 (big-endian)
        &[0xc3, 0x50],                  // id.idiag_dport = 50000
        &[10, 0, 0, 7], &[0; 12],       // id.idiag_src = 10.0.0.7
        &[10, 0, 0, 9], &[0; 12],       // id.idiag_dst = 10.0.0.9
        &[0; 4],                        // id.idiag_if
        &[0x44, 0x33, 0x22, 0x11],      // id.idiag_cookie[0] = low half
        &[0x02, 0, 0, 0],               // id.idiag_cookie[1] = high half
        &[0; 4],                        // idiag_expires
        &[0x01, 0x01, 0, 0],            // idiag_rqueue = 257
        &[0; 4],                        // idiag_wqueue
        &[0xe8, 0x03, 0, 0],            // idiag_uid = 1000
        &[0x40, 0xe2, 0x01, 0],         // idiag_inode = 123456
    ]
    .concat();
    assert_eq!(m.len(), 88);
    // No attributes: the next message follows at once (88 is aligned).
    m.shrink_to_fit();
    m
}

#[rustfmt::skip]
fn done(seq: u32, code: i32) -> Vec<u8> {
    [
        &[0x14, 0, 0, 0][..],   // nlmsg_len = 20
        &[3, 0],                // nlmsg_type = NLMSG_DONE
        &[0x02, 0],             // NLM_F_MULTI
        &seq.to_ne_bytes(),     // nlmsg_seq
        &[0; 4],                // nlmsg_pid
        &code.to_ne_bytes(),    // the dump's error code
    ]
    .concat()
}

#[test]
fn hand_built_message_fields() {
    let m = hand_built_close_wait(5);
    let msg = DiagMsg::new(&m[16..]).unwrap();
    assert_eq!(msg.family(), AF_INET);
    assert_eq!(msg.state(), Some(TcpState::CloseWait));
    assert_eq!(msg.local(), "10.0.0.7:8080".parse().unwrap());
    assert_eq!(msg.remote(), "10.0.0.9:50000".parse().unwrap());
    assert_eq!(msg.cookie(), 0x2_1122_3344);
    assert_eq!(msg.rqueue(), 257);
    assert_eq!(msg.wqueue(), 0);
    assert_eq!(msg.uid(), 1000);
    assert_eq!(msg.inode(), 123456);
    assert!(DiagMsg::new(&m[16..87]).is_none(), "71 bytes is too short");
}

#[test]
fn multi_part_dump_and_done() {
    // Datagram 1: two messages; datagram 2: one message and DONE.
    let d1 = [hand_built_close_wait(5), hand_built_close_wait(5)].concat();
    let d2 = [hand_built_close_wait(5), done(5, 0)].concat();
    let (flow, got) = collect(&d1, 5, TCPDIAG_GETSOCK).unwrap();
    assert_eq!((flow, got.len()), (Flow::More, 2));
    let (flow, got) = collect(&d2, 5, TCPDIAG_GETSOCK).unwrap();
    assert_eq!((flow, got.len()), (Flow::Done, 1));
}

#[test]
fn foreign_sequence_numbers_are_skipped() {
    // Left over from an abandoned dump (seq 4), then ours (seq 5).
    let d = [hand_built_close_wait(4), done(4, 0), hand_built_close_wait(5)].concat();
    let (flow, got) = collect(&d, 5, TCPDIAG_GETSOCK).unwrap();
    assert_eq!((flow, got.len()), (Flow::More, 1));
}

#[test]
fn other_message_types_are_ignored() {
    let mut m = hand_built_close_wait(5);
    m[4] = 20; // SOCK_DIAG_BY_FAMILY while we asked TCPDIAG_GETSOCK
    let (_, got) = collect(&m, 5, TCPDIAG_GETSOCK).unwrap();
    assert!(got.is_empty());
    let (_, got) = collect(&m, 5, SOCK_DIAG_BY_FAMILY).unwrap();
    assert_eq!(got.len(), 1);
}

#[test]
fn nlmsg_error_carries_the_errno() {
    #[rustfmt::skip]
    let err: Vec<u8> = [
        &[0x24, 0, 0, 0][..],               // nlmsg_len = 36 = 16 + 4 + 16
        &[2, 0],                            // nlmsg_type = NLMSG_ERROR
        &[0, 0],                            // flags
        &5u32.to_ne_bytes(),                // nlmsg_seq
        &[0; 4],                            // nlmsg_pid
        &(-libc::EINVAL).to_ne_bytes(),     // nlmsgerr.error = -EINVAL
        &[0; 16],                           // nlmsgerr.msg (the request's header)
    ]
    .concat();
    let e = collect(&err, 5, TCPDIAG_GETSOCK).unwrap_err();
    assert_eq!(e.category(), "DiagKernel");
    let ScanError::DiagKernel { source } = e else { unreachable!() };
    assert_eq!(source.raw_os_error(), Some(libc::EINVAL));

    // error 0 is an ACK, not an error.
    let mut ack = err.clone();
    ack[16..20].copy_from_slice(&0i32.to_ne_bytes());
    assert_eq!(collect(&ack, 5, TCPDIAG_GETSOCK).unwrap().0, Flow::More);
}

#[test]
fn done_with_an_error_code_is_an_error() {
    let e = collect(&done(5, -libc::EINTR), 5, TCPDIAG_GETSOCK).unwrap_err();
    assert_eq!(e.category(), "DiagKernel");
    // A DONE without payload (old kernels) is a plain end.
    let mut d = done(5, 0);
    d.truncate(16);
    d[0] = 16;
    assert_eq!(collect(&d, 5, TCPDIAG_GETSOCK).unwrap().0, Flow::Done);
}

#[test]
fn malformed_lengths_are_errors_not_panics() {
    let mut m = hand_built_close_wait(5);
    m[0] = 200; // longer than the datagram
    assert_eq!(collect(&m, 5, 18).unwrap_err().category(), "DiagMalformed");
    let mut m = hand_built_close_wait(5);
    m[0] = 8; // shorter than a header
    assert_eq!(collect(&m, 5, 18).unwrap_err().category(), "DiagMalformed");
    let mut m = hand_built_close_wait(5);
    m[0] = 40; // a data message too short for inet_diag_msg
    m.truncate(40);
    assert_eq!(collect(&m, 5, 18).unwrap_err().category(), "DiagMalformed");
    // A trailing partial header is ignored (never produced by the kernel).
    let mut m = hand_built_close_wait(5);
    m.extend_from_slice(&[1, 2, 3]);
    assert_eq!(collect(&m, 5, 18).unwrap().1.len(), 1);
    let (flow, got) = collect(&[], 5, 18).unwrap();
    assert_eq!((flow, got.len()), (Flow::More, 0));
}

/// A legacy dump of a namespace holding: LISTEN 127.0.0.1:7070, LISTEN
/// [::1]:7071, an IPv6 ESTABLISHED pair on 7071, and an IPv4 CLOSE_WAIT /
/// FIN_WAIT2 pair on 7070 — captured from kernel 6.18 (x86_64, so native
/// endian is little endian) with `tests/golden_capture.rs`. One datagram of
/// six 124-byte messages (16 header + 72 `inet_diag_msg` + 36 bytes of
/// attributes the kernel always adds: SHUTDOWN, MARK, CGROUP_ID, SOCKOPT,
/// and SKV6ONLY for IPv6 listeners) and NLMSG_DONE. `ss -tanie` at the same
/// moment:
///
/// ```text
/// LISTEN     0 128 127.0.0.1:7070  0.0.0.0:*       ino:99559 sk:6
/// CLOSE-WAIT 1 0   127.0.0.1:7070  127.0.0.1:53120 ino:99564 sk:a
/// FIN-WAIT-2 0 0   127.0.0.1:53120 127.0.0.1:7070  ino:99563 sk:b
/// LISTEN     0 128 [::1]:7071      [::]:*          ino:99560 sk:7
/// ESTAB      0 0   [::1]:36664     [::1]:7071      ino:99561 sk:8
/// ESTAB      0 0   [::1]:7071      [::1]:36664     ino:99562 sk:9
/// ```
const CAPTURED_6_18: &str = "
7c0000001200020001000000da310000020a00001b9e00007f00000100000000
0000000000000000000000000000000000000000000000000000000006000000
0000000000000000000000008000000000000000e78401000500080000000000
08000f00000000000c0015000100000000000000060016005200000084000000
1200020001000000da3100000a0a00001b9f0000000000000000000000000000
0000000100000000000000000000000000000000000000000700000000000000
00000000000000008000000000000000e8840100050008000000000005000b00
0100000008000f00000000000c00150001000000000000000600160012000000
7c0000001200020001000000da3100000a0100008f381b9f0000000000000000
0000000000000001000000000000000000000000000000010000000008000000
0000000000000000000000000000000000000000e98401000500080000000000
08000f00000000000c001500010000000000000006001600120000007c000000
1200020001000000da3100000a0100001b9f8f38000000000000000000000000
0000000100000000000000000000000000000001000000000900000000000000
00000000000000000000000000000000ea840100050008000000000008000f00
000000000c001500010000000000000006001600120000007c00000012000200
01000000da310000020800001b9ecf807f000001000000000000000000000000
7f000001000000000000000000000000000000000a0000000000000000000000
010000000000000000000000ec840100050008000100000008000f0000000000
0c001500010000000000000006001600520000007c0000001200020001000000
da31000002050000cf801b9e7f0000010000000000000000000000007f000001
000000000000000000000000000000000b000000000000000000000000000000
0000000000000000eb840100050008000200000008000f00000000000c001500
01000000000000000600160052000000140000000300020001000000da310000
00000000";

#[test]
fn captured_legacy_dump_parses_to_what_ss_showed() {
    let bytes = hex(CAPTURED_6_18);
    assert_eq!(bytes.len(), 772);
    // The first header, field by field.
    assert_eq!(&bytes[0..4], &[0x7c, 0, 0, 0], "nlmsg_len = 124");
    assert_eq!(&bytes[4..6], &[18, 0], "nlmsg_type = TCPDIAG_GETSOCK");
    assert_eq!(&bytes[6..8], &[0x02, 0], "nlmsg_flags = NLM_F_MULTI");
    assert_eq!(&bytes[8..12], &[1, 0, 0, 0], "nlmsg_seq = 1");
    // The first inet_diag_msg, field by field.
    assert_eq!(bytes[16], 2, "idiag_family = AF_INET");
    assert_eq!(bytes[17], 10, "idiag_state = LISTEN");
    assert_eq!(&bytes[20..22], &[0x1b, 0x9e], "idiag_sport = 7070");
    assert_eq!(&bytes[24..28], &[127, 0, 0, 1], "idiag_src = 127.0.0.1");
    assert_eq!(&bytes[60..64], &[6, 0, 0, 0], "idiag_cookie[0] = 6 (ss sk:6)");
    assert_eq!(&bytes[84..88], &[0xe7, 0x84, 1, 0], "idiag_inode = 99559");

    let (flow, got) = collect(&bytes, 1, TCPDIAG_GETSOCK).unwrap();
    assert_eq!(flow, Flow::Done);
    assert_eq!(
        got,
        [
            "Listen 127.0.0.1:7070 -> 0.0.0.0:0 rq=0 ino=99559 cookie=6 fam=2",
            "Listen [::1]:7071 -> [::]:0 rq=0 ino=99560 cookie=7 fam=10",
            "Established [::1]:36664 -> [::1]:7071 rq=0 ino=99561 cookie=8 fam=10",
            "Established [::1]:7071 -> [::1]:36664 rq=0 ino=99562 cookie=9 fam=10",
            "CloseWait 127.0.0.1:7070 -> 127.0.0.1:53120 rq=1 ino=99564 cookie=10 fam=2",
            "FinWait2 127.0.0.1:53120 -> 127.0.0.1:7070 rq=0 ino=99563 cookie=11 fam=2",
        ]
    );
    // The same bytes under another sequence number are all skipped.
    let (flow, got) = collect(&bytes, 2, TCPDIAG_GETSOCK).unwrap();
    assert_eq!((flow, got.len()), (Flow::More, 0));
}

#[test]
fn lookup_request_bytes_carry_the_dumped_identity() {
    let m = hand_built_close_wait(5);
    let id = DiagMsg::new(&m[16..]).unwrap().sock_id();
    // The identity built from addresses and cookie is the one a dump gives.
    let built = SockId::new("10.0.0.7:8080".parse().unwrap(), "10.0.0.9:50000".parse().unwrap(), 0x2_1122_3344);
    assert_eq!(id, built);
    let req = encode_lookup_request(&id, 9);
    #[rustfmt::skip]
    let want: Vec<u8> = [
        // struct nlmsghdr
        &[0x48, 0, 0, 0][..],           // nlmsg_len = 72 = 16 + 56
        &[20, 0],                       // nlmsg_type = SOCK_DIAG_BY_FAMILY
        &[0x01, 0],                     // nlmsg_flags = NLM_F_REQUEST only: an exact lookup, no dump
        &[9, 0, 0, 0],                  // nlmsg_seq = 9
        &[0, 0, 0, 0],                  // nlmsg_pid
        // struct inet_diag_req_v2
        &[2],                           // sdiag_family = AF_INET
        &[6],                           // sdiag_protocol = IPPROTO_TCP
        &[2],                           // idiag_ext = 1 << (INET_DIAG_INFO - 1)
        &[0],                           // pad
        &[0xfe, 0x0f, 0, 0],            // idiag_states = all (a lookup ignores it)
        &[0x1f, 0x90],                  // id.idiag_sport = 8080
        &[0xc3, 0x50],                  // id.idiag_dport = 50000
        &[10, 0, 0, 7], &[0; 12],       // id.idiag_src
        &[10, 0, 0, 9], &[0; 12],       // id.idiag_dst
        &[0; 4],                        // id.idiag_if
        &[0x44, 0x33, 0x22, 0x11],      // id.idiag_cookie[0]: the socket's, checked by the kernel
        &[0x02, 0, 0, 0],               // id.idiag_cookie[1]
    ]
    .concat();
    assert_eq!(req, want);

    // IPv6 (and IPv4-mapped) identities are AF_INET6 with 16-byte addresses.
    let v6 = SockId::new("[::ffff:10.0.0.7]:8080".parse().unwrap(), "[2001:db8::9]:1".parse().unwrap(), 1);
    assert_eq!(v6.family(), AF_INET6);
    let req = encode_lookup_request(&v6, 1);
    assert_eq!(&req[28..44], &"::ffff:10.0.0.7".parse::<Ipv6Addr>().unwrap().octets());
}

/// A lookup reply: the message of `hand_built_close_wait` followed by an
/// `INET_DIAG_INFO` attribute whose `tcp_info` says `last_ack_recv_ms`, and
/// one attribute before it that must be skipped.
#[rustfmt::skip]
fn lookup_reply(seq: u32, last_ack_recv_ms: u32) -> Vec<u8> {
    let mut m = hand_built_close_wait(seq);
    m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    // INET_DIAG_SHUTDOWN (8), one byte, padded to 4.
    m.extend_from_slice(&[5, 0, 8, 0, 1, 0, 0, 0]);
    // INET_DIAG_INFO (2): 4-byte header, then a 104-byte struct tcp_info.
    let mut info = vec![0u8; 104];
    info[0] = 8; // tcpi_state = CLOSE_WAIT
    info[52..56].copy_from_slice(&7u32.to_ne_bytes()); // tcpi_last_data_recv: not the one read
    info[56..60].copy_from_slice(&last_ack_recv_ms.to_ne_bytes()); // tcpi_last_ack_recv
    m.extend_from_slice(&108u16.to_ne_bytes());
    m.extend_from_slice(&2u16.to_ne_bytes());
    m.extend_from_slice(&info);
    let len = m.len() as u32;
    m[0..4].copy_from_slice(&len.to_ne_bytes());
    m
}

#[test]
fn lookup_replies_give_the_time_since_the_last_ack_or_say_the_socket_is_gone() {
    assert_eq!(parse_lookup_reply(&lookup_reply(4, 9896), 4).unwrap(), LookupReply::Found(Some(9896)));
    // A reply to an earlier request is not this one's.
    assert_eq!(parse_lookup_reply(&lookup_reply(3, 9896), 4).unwrap(), LookupReply::Other);
    // No INET_DIAG_INFO (or a truncated one): found, but no time.
    let bare = {
        let mut m = hand_built_close_wait(4);
        m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        m
    };
    assert_eq!(parse_lookup_reply(&bare, 4).unwrap(), LookupReply::Found(None));
    let mut short = lookup_reply(4, 1);
    let cut = short.len() - 50;
    short.truncate(cut);
    short[0..4].copy_from_slice(&(cut as u32).to_ne_bytes());
    assert_eq!(parse_lookup_reply(&short, 4).unwrap(), LookupReply::Found(None), "attribute longer than the message");
    // ENOENT: the socket closed since the dump (or the cookie is another's).
    let mut enoent = done(4, -2);
    enoent[4..6].copy_from_slice(&2u16.to_ne_bytes()); // NLMSG_ERROR
    assert_eq!(parse_lookup_reply(&enoent, 4).unwrap(), LookupReply::Gone);
    let mut eperm = done(4, -1);
    eperm[4..6].copy_from_slice(&2u16.to_ne_bytes());
    assert!(matches!(parse_lookup_reply(&eperm, 4), Err(ScanError::DiagKernel { .. })));
}
