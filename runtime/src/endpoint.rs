//! The HTTP endpoint both binaries expose: `GET /metrics` (Prometheus text
//! format from a `prometheus-client` registry), `GET /healthz` (the process
//! is serving) and `GET /readyz` (the component says it is ready). Nothing
//! else; any other path is 404.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::apiclient::ApiHealth;
use crate::error::Error;
use crate::error_chain;

/// Readiness as the component reports it, and (when given) whether its
/// writes reach the API server: `/readyz` answers 200 only while the
/// component says it is ready and [`ApiHealth::problem`] has none; otherwise
/// 503 with the reason in one line.
#[derive(Clone, Default)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    api: Option<ApiHealth>,
}

impl Readiness {
    /// Readiness that also fails while writes to the API server keep
    /// failing.
    pub fn with_api_health(api: ApiHealth) -> Self {
        Self { ready: Arc::default(), api: Some(api) }
    }
    /// Marks the component ready (or not).
    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
    /// `Ok` when ready; otherwise why not.
    pub fn check(&self) -> Result<(), String> {
        if !self.ready.load(Ordering::Relaxed) {
            return Err("not ready: starting (caches not synced or no sweep done yet)".into());
        }
        match self.api.as_ref().and_then(|api| api.problem(std::time::SystemTime::now())) {
            Some(problem) => Err(format!("not ready: {problem}")),
            None => Ok(()),
        }
    }
}

/// A bound endpoint; [`Endpoint::serve`] answers requests until the task is
/// dropped.
pub struct Endpoint {
    listener: TcpListener,
    registry: Arc<Registry>,
    readiness: Readiness,
}

impl Endpoint {
    /// Binds `addr` (port 0 picks a free port; see [`Endpoint::local_addr`]).
    pub async fn bind(addr: SocketAddr, registry: Registry, readiness: Readiness) -> Result<Self, Error> {
        let listener = TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source })?;
        Ok(Self { listener, registry: Arc::new(registry), readiness })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves connections forever; each on its own task.
    pub async fn serve(self) {
        loop {
            let (stream, _) = match self.listener.accept().await {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "accepting a metrics connection failed");
                    continue;
                }
            };
            let registry = self.registry.clone();
            let readiness = self.readiness.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| respond(req, registry.clone(), readiness.clone()));
                if let Err(error) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                    tracing::debug!(error = %error_chain(&error), "metrics connection ended with an error");
                }
            });
        }
    }
}

async fn respond(
    req: Request<Incoming>,
    registry: Arc<Registry>,
    readiness: Readiness,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = |status: StatusCode, body: String| {
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        resp
    };
    if req.method() != Method::GET {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into()));
    }
    Ok(match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match readiness.check() {
            Ok(()) => text(StatusCode::OK, "ok\n".into()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, &registry) {
                Ok(()) => {
                    let mut resp = text(StatusCode::OK, body);
                    resp.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
                    );
                    resp
                }
                Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics failed: {error}\n")),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found: try /metrics, /healthz or /readyz\n".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let mut registry = Registry::default();
        let counter: Counter = Counter::default();
        registry.register("demo_things", "Things counted for the test", counter.clone());
        counter.inc_by(3);
        let readiness = Readiness::default();
        let endpoint = Endpoint::bind("127.0.0.1:0".parse().unwrap(), registry, readiness.clone()).await.unwrap();
        let addr = endpoint.local_addr().unwrap();
        let server = tokio::spawn(endpoint.serve());

        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        readiness.set(true);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let metrics = get(addr, "/metrics").await;
        assert!(metrics.contains("# HELP demo_things Things counted for the test"), "{metrics}");
        assert!(metrics.contains("demo_things_total 3"), "{metrics}");
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        server.abort();
    }

    #[tokio::test]
    async fn a_taken_address_is_named_once_with_its_cause() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let Err(error) = Endpoint::bind(addr, Registry::default(), Readiness::default()).await else {
            panic!("bound {addr} twice");
        };
        let cause = std::error::Error::source(&error).expect("the OS error is the source").to_string();
        assert!(cause.contains("in use"), "{cause}");
        assert_eq!(error.to_string(), format!("cannot listen on {addr} for /metrics, /healthz and /readyz"));
        assert_eq!(error_chain(&error), format!("{error}: {cause}"));
    }

    #[tokio::test]
    async fn readiness_fails_with_the_reason_while_writes_keep_failing() {
        let health = ApiHealth::default();
        let readiness = Readiness::with_api_health(health.clone());
        let endpoint =
            Endpoint::bind("127.0.0.1:0".parse().unwrap(), Registry::default(), readiness.clone()).await.unwrap();
        let addr = endpoint.local_addr().unwrap();
        let server = tokio::spawn(endpoint.serve());

        let starting = get(addr, "/readyz").await;
        assert!(
            starting.starts_with("HTTP/1.1 503")
                && starting.ends_with("not ready: starting (caches not synced or no sweep done yet)\n"),
            "{starting}"
        );
        readiness.set(true);
        for _ in 0..crate::apiclient::FAILED_WRITES_BEFORE_UNREADY - 1 {
            health.record_failure("PATCH /x: 503 Service Unavailable".into());
        }
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"), "two failures are not enough");
        health.record_failure("PATCH /x: no answer".into());
        let failing = get(addr, "/readyz").await;
        assert!(failing.starts_with("HTTP/1.1 503"), "{failing}");
        assert!(
            failing.ends_with(
                "not ready: 3 API writes in a row failed or timed out (the last: PATCH /x: no answer); no write has succeeded yet\n"
            ),
            "{failing}"
        );
        health.record_success(std::time::SystemTime::now());
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        server.abort();
    }
}
