//! `connhealth-demo`: a TCP workload that leaks on purpose, for tests and
//! the demo. Plain std networking, no async: it must behave exactly like a
//! careless application would.
//!
//! - `serve`: accepts connections and keeps every accepted socket open
//!   forever, also after the client closed its side — each such socket sits
//!   in CLOSE_WAIT on the server. With `--close-after` it instead closes each
//!   connection after that long (a healthy server).
//! - `connect`: opens connections to a server and closes them (sending the
//!   FIN that puts the server's socket in CLOSE_WAIT), `--count` of them,
//!   one every `--interval`, then idles (or exits with `--exit`). With
//!   `--hold` it keeps them open instead (ESTABLISHED on both sides: a busy,
//!   healthy pod).

use std::io::Read;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "connhealth-demo", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Accept connections and never close them (CLOSE_WAIT leak).
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// Close each connection after this many milliseconds instead of
        /// leaking it.
        #[arg(long)]
        close_after_ms: Option<u64>,
    },
    /// Open and close connections to a server.
    Connect {
        /// Server address.
        #[arg(long)]
        to: SocketAddr,
        /// How many connections (bounded: the load stops by itself).
        #[arg(long, default_value_t = 20)]
        count: u32,
        /// Milliseconds between connections.
        #[arg(long, default_value_t = 200)]
        interval_ms: u64,
        /// Exit when done instead of idling.
        #[arg(long)]
        exit: bool,
        /// Keep the connections open instead of closing them.
        #[arg(long, conflicts_with = "exit")]
        hold: bool,
    },
}

fn main() -> std::io::Result<()> {
    match Cli::parse().command {
        Command::Serve { listen, close_after_ms } => serve(listen, close_after_ms.map(Duration::from_millis)),
        Command::Connect { to, count, interval_ms, exit, hold } => {
            let _held = connect(to, count, Duration::from_millis(interval_ms), hold)?;
            if !exit {
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            Ok(())
        }
    }
}

fn serve(listen: SocketAddr, close_after: Option<Duration>) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    eprintln!("connhealth-demo: listening on {}", listener.local_addr()?);
    // The leak: accepted sockets are kept here and never closed.
    let mut kept: Vec<TcpStream> = Vec::new();
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                eprintln!("connhealth-demo: accept failed: {e}");
                continue;
            }
        };
        match close_after {
            Some(after) => {
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(after));
                    let mut buf = [0u8; 512];
                    let _ = stream.read(&mut buf);
                    let _ = stream.shutdown(Shutdown::Both);
                });
            }
            None => kept.push(stream),
        }
    }
    Ok(())
}

/// Opens `count` connections; returns them when `hold`, else closes each.
fn connect(to: SocketAddr, count: u32, interval: Duration, hold: bool) -> std::io::Result<Vec<TcpStream>> {
    let mut held = Vec::new();
    for i in 0..count {
        match TcpStream::connect_timeout(&to, Duration::from_secs(5)) {
            Ok(stream) if hold => held.push(stream),
            // Dropping the stream closes it: the server gets our FIN.
            Ok(stream) => drop(stream),
            Err(e) => eprintln!("connhealth-demo: connection {i} to {to} failed: {e}"),
        }
        std::thread::sleep(interval);
    }
    let done = if hold { "holds" } else { "opened and closed" };
    eprintln!("connhealth-demo: {done} {count} connections to {to}");
    Ok(held)
}
