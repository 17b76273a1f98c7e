//! [`HangingProxy`]: a TCP proxy in front of the real API server that can
//! play a hung one. While it hangs, connections are accepted and never
//! answered, and the bytes of connections already open are held, not
//! forwarded (TLS and HTTP simply stall, as with a server that stopped
//! answering). When it resumes, the connections of the hung period are
//! closed (clients reconnect, as after a server restart) and new ones are
//! forwarded again.
//!
//! Plain threads, independent of the test's Tokio runtime; every thread ends
//! with its connection, and the listener's with the proxy.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A proxy on a free loopback port; see the module doc.
pub struct HangingProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    hanging: AtomicBool,
    stopped: AtomicBool,
    next_id: AtomicU64,
    /// Every open client-side and upstream socket, by connection id.
    open: Mutex<Vec<(u64, TcpStream)>>,
}

impl Shared {
    fn track(&self, id: u64, stream: &TcpStream) {
        if let Ok(clone) = stream.try_clone() {
            self.open.lock().unwrap().push((id, clone));
        }
    }
    fn close(&self, id: u64) {
        let mut open = self.open.lock().unwrap();
        for (_, s) in open.iter().filter(|(i, _)| *i == id) {
            let _ = s.shutdown(Shutdown::Both);
        }
        open.retain(|(i, _)| *i != id);
    }
    fn close_all(&self) {
        let mut open = self.open.lock().unwrap();
        for (_, s) in open.iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
        open.clear();
    }
}

impl HangingProxy {
    /// Starts forwarding 127.0.0.1:<free port> to `upstream`.
    pub fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared::default());
        let accept_shared = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accept_shared.stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let id = accept_shared.next_id.fetch_add(1, Ordering::SeqCst);
                accept_shared.track(id, &client);
                if accept_shared.hanging.load(Ordering::SeqCst) {
                    // Accepted, never answered: held until resume() closes it.
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    accept_shared.close(id);
                    continue;
                };
                accept_shared.track(id, &server);
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (from, to) = (from.try_clone().expect("clone"), to.try_clone().expect("clone"));
                    let shared = accept_shared.clone();
                    std::thread::spawn(move || pump(id, from, to, &shared));
                }
            }
        });
        Self { addr, shared }
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on: answer nothing, forward nothing.
    pub fn hang(&self) {
        self.shared.hanging.store(true, Ordering::SeqCst);
    }

    /// Closes every connection of the hung period and forwards again.
    pub fn resume(&self) {
        self.shared.hanging.store(false, Ordering::SeqCst);
        self.shared.close_all();
    }

    /// A copy of `kubeconfig` whose clusters point at the proxy (the API
    /// server's certificate names 127.0.0.1, so TLS verification holds).
    pub fn kubeconfig(&self, kubeconfig: &Path) -> PathBuf {
        let mut config: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(kubeconfig).expect("read kubeconfig")).expect("kubeconfig");
        for cluster in config["clusters"].as_sequence_mut().expect("clusters").iter_mut() {
            cluster["cluster"]["server"] = format!("https://{}", self.addr).into();
        }
        let path = std::env::temp_dir().join(format!("proxied-{}.kubeconfig", crate::random_suffix()));
        std::fs::write(&path, serde_yaml::to_string(&config).expect("yaml")).expect("write kubeconfig");
        path
    }
}

/// The API server's address from a kubeconfig's first cluster.
pub fn apiserver_addr(kubeconfig: &Path) -> SocketAddr {
    let config: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(kubeconfig).expect("read kubeconfig")).expect("kubeconfig");
    let server = config["clusters"][0]["cluster"]["server"].as_str().expect("server").to_owned();
    server.trim_start_matches("https://").trim_end_matches('/').parse().expect("server is https://IP:PORT")
}

impl Drop for HangingProxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.shared.close_all();
        // Wake the accept loop so that it sees `stopped`.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies `from` to `to` until either side closes; while the proxy hangs,
/// what was read is held (not written) until resume() closes the pair.
fn pump(id: u64, mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while shared.hanging.load(Ordering::SeqCst) {
            if shared.stopped.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !shared.open.lock().unwrap().iter().any(|(i, _)| *i == id) {
            break; // closed by resume(): its held bytes go nowhere
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    shared.close(id);
}
