//! The socket holder the benchmark and the root tests run inside their
//! namespaces (`ip netns exec NAME connhealth-bench hold ...`): a fixed mix
//! of TCP sockets in the current network namespace, held until stdin
//! closes.
//!
//! `hold --sockets N` (N a multiple of 100) builds, per 1,000 sockets, 492
//! ESTABLISHED, 200 CLOSE_WAIT, 200 FIN_WAIT2, 100 TIME_WAIT and 8 LISTEN,
//! half of each over IPv6 (rounded down for other sizes, at least one
//! listener per family: 398 sockets for 400); `--close-wait N` builds only N
//! CLOSE_WAIT sockets (and their FIN_WAIT2 peers). It prints `ready`, then
//! serves commands on stdin, one per line, answering `ok`: `leak` adds one
//! CLOSE_WAIT socket (and its peer); `ping` sends one byte each way on one
//! ESTABLISHED connection (traffic without a state change); end of input
//! exits, closing them all.

use std::io::{BufRead, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};

use crate::sys::raise_nofile_limit;

/// Holds a socket mix in the current network namespace until stdin closes.
#[derive(Debug, Clone, clap::Args)]
pub struct HoldArgs {
    /// Number of sockets, a multiple of 100.
    #[arg(long, default_value_t = 1000)]
    pub sockets: u64,
    /// Only this many CLOSE_WAIT sockets (and their FIN_WAIT2 peers), IPv4,
    /// instead of the mix.
    #[arg(long)]
    pub close_wait: Option<u64>,
    /// First listening port (several holders can share a namespace).
    #[arg(long, default_value_t = 5000)]
    pub port_base: u16,
}

type Res<T> = Result<T, String>;

/// Per family and per 1,000 sockets of the mix (both families: twice this);
/// scaled down (rounded down) for other sizes.
const LISTEN: u64 = 4;
const ESTAB_PAIRS: u64 = 123; // 246 ESTABLISHED
const CW_PAIRS: u64 = 100; // 100 CLOSE_WAIT + 100 FIN_WAIT2
const TIME_WAIT: u64 = 50;

struct Holder {
    listeners: Vec<TcpListener>,
    kept: Vec<TcpStream>,
    next: usize,
}

impl Holder {
    fn listener(&mut self) -> &TcpListener {
        self.next = (self.next + 1) % self.listeners.len();
        &self.listeners[self.next]
    }

    fn pair(&mut self) -> Res<(TcpStream, TcpStream)> {
        let l = self.listener();
        let addr = l.local_addr().map_err(|e| e.to_string())?;
        let client = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        let (server, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
        Ok((client, server))
    }

    fn close_wait(&mut self) -> Res<()> {
        let (client, server) = self.pair()?;
        client.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
        self.kept.push(client);
        self.kept.push(server);
        Ok(())
    }

    /// One byte each way on the first ESTABLISHED pair.
    fn ping(&mut self) -> Res<()> {
        let [client, server] =
            self.kept.get(..2).and_then(|p| <&[TcpStream; 2]>::try_from(p).ok()).ok_or("no connection to ping on")?;
        let mut buf = [0u8; 1];
        (&*client).write_all(b"p").map_err(|e| e.to_string())?;
        (&*server).read_exact(&mut buf).map_err(|e| e.to_string())?;
        (&*server).write_all(b"q").map_err(|e| e.to_string())?;
        (&*client).read_exact(&mut buf).map_err(|e| e.to_string())?;
        Ok(())
    }

    fn time_wait(&mut self) -> Res<()> {
        let (client, server) = self.pair()?;
        client.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 1];
        (&server).read(&mut buf).map_err(|e| e.to_string())?;
        drop(server);
        (&client).read(&mut buf).map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// Builds the mix, says `ready` on stdout, serves stdin until it closes.
pub fn hold(args: &HoldArgs) -> Res<()> {
    raise_nofile_limit(2 * args.sockets + 4096).map_err(|e| format!("RLIMIT_NOFILE: {e}"))?;
    let mut holders = Vec::new();
    for host in ["127.0.0.1", "[::1]"] {
        let per_mille = |n: u64| n * args.sockets / 1000;
        let listen = if args.close_wait.is_some() { 1 } else { per_mille(LISTEN).max(1) };
        let listeners = (0..listen)
            .map(|i| {
                let addr = format!("{host}:{}", u64::from(args.port_base) + i);
                TcpListener::bind(&addr).map_err(|e| format!("bind {addr}: {e}"))
            })
            .collect::<Res<Vec<_>>>()?;
        let mut h = Holder { listeners, kept: Vec::new(), next: 0 };
        if let Some(n) = args.close_wait {
            if host == "127.0.0.1" {
                for _ in 0..n {
                    h.close_wait()?;
                }
            }
        } else {
            for _ in 0..per_mille(ESTAB_PAIRS) {
                let (c, s) = h.pair()?;
                h.kept.push(c);
                h.kept.push(s);
            }
            for _ in 0..per_mille(CW_PAIRS) {
                h.close_wait()?;
            }
            for _ in 0..per_mille(TIME_WAIT) {
                h.time_wait()?;
            }
        }
        holders.push(h);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    for line in std::io::stdin().lock().lines() {
        match line.map_err(|e| e.to_string())?.trim() {
            "leak" => holders[0].close_wait()?,
            "ping" => holders[0].ping()?,
            "" => {}
            other => return Err(format!("unknown command {other:?}")),
        }
        writeln!(out, "ok").map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    Ok(())
}
