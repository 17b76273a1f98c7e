//! The Kubernetes client both binaries use: kube's own client stack with a
//! deadline on every API call, a bounded retry, and a record of whether
//! writes reach the API server ([`ApiHealth`], shown in `/readyz` and
//! metrics).
//!
//! Why not `Client::try_default()` as it comes: kube 5's default client has
//! no read timeout (a write sent on a connection the server never answered
//! was measured hanging 89 s, until the server dropped the connection) and
//! retries 429/503/504 answers up to 15 times with a backoff that grows
//! towards 1000 s and honours `Retry-After`, without a log line (every API
//! server restart answers one write `503`, `Retry-After: 5`). The agent's
//! sweep loop waits for its writes, so either went by as silence. Here:
//!
//! - kube's default retry is off; [`RetryPolicy`] (kube's own policy, tower's
//!   `RetryLayer`) retries a 429/503/504 answer at most [`RETRIES`] times,
//!   from 200 ms doubling to at most 2 s (a server's `Retry-After` is
//!   honoured within the deadline).
//! - A deadline (`--api-timeout`): every call, retries included, must have
//!   its response headers within it, and the body of any response except a
//!   watch must arrive by the same deadline. A watch is bounded by kube's
//!   watcher instead (its idle timeout).
//! - Writes (POST, PUT, PATCH, DELETE) are recorded in [`ApiHealth`]: an
//!   answer in 2xx is a success; no answer, a timeout, 429 or 5xx is a
//!   failure; other 4xx answers (conflict, forbidden, not found) show the
//!   server is there and count as neither.
//!
//! The layers sit outside kube's own stack (TLS with CA reload, auth token
//! refresh, proxy, request tracing all stay kube's); kube's boxed stack is
//! put behind a `Buffer` (as `kube::Client` itself does) so that the retry
//! can clone it.
//!
//! How the client's errors read: kube's errors repeat their cause in their
//! own message (`ServiceError: {0}` with the cause as source too), so a
//! chain printed naively says each cause twice; [`crate::error_chain`]
//! says each once.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use kube::client::retry::RetryPolicy;
use kube::client::{Body, ClientBuilder};
use kube::{Client, Config};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tower::buffer::BufferLayer;
use tower::retry::RetryLayer;
use tower::{BoxError, Layer, Service};

use crate::error::Error;

/// At most this many retries of a 429/503/504 answer within one call.
pub const RETRIES: u32 = 3;

/// `/readyz` fails after this many writes in a row failed or timed out.
pub const FAILED_WRITES_BEFORE_UNREADY: u64 = 3;

/// The default `--api-timeout` of both binaries.
pub const DEFAULT_API_TIMEOUT: &str = "10s";

/// Parses `--api-timeout` (a duration like `10s`): between 100ms and 10m,
/// so that neither a typo nor a huge value turns the deadline off.
pub fn parse_api_timeout(s: &str) -> Result<Duration, String> {
    let timeout = crate::parse_duration(s)?;
    if timeout < Duration::from_millis(100) || timeout > Duration::from_secs(600) {
        return Err(format!("{s:?} is out of range: use between 100ms and 10m"));
    }
    Ok(timeout)
}

/// Infers the configuration (in-cluster, else `KUBECONFIG`) and builds a
/// client whose every call ends within `timeout`, recording writes in
/// `health`.
pub async fn connect(timeout: Duration, health: &ApiHealth) -> Result<Client, Error> {
    let config = Config::infer().await.map_err(|e| Error::Connect(kube::Error::InferConfig(e)))?;
    client_from_config(config, timeout, health).map_err(Error::Connect)
}

/// [`connect`] for a given configuration. Needs a Tokio runtime (the
/// buffer's worker is spawned on it).
pub fn client_from_config(mut config: Config, timeout: Duration, health: &ApiHealth) -> Result<Client, kube::Error> {
    config.default_retry = false;
    let retry = RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(2), RETRIES, true)
        .expect("constant backoff parameters are valid");
    let client = ClientBuilder::try_from(config)?
        .with_layer(&BufferLayer::new(1024))
        .with_layer(&RetryLayer::new(retry))
        .with_layer(&DeadlineLayer { timeout })
        .with_layer(&RecordWritesLayer { health: health.clone() })
        .build();
    Ok(client)
}

/// A request and its deadline: what [`Error::DeadlineExceeded`] (the error
/// the caller's `kube::Error::Service` carries when it is missed) says.
#[derive(Debug, Clone)]
struct Deadline {
    method: Method,
    path: String,
    timeout: Duration,
}

impl Deadline {
    fn exceeded(&self) -> BoxError {
        Box::new(Error::DeadlineExceeded {
            method: self.method.clone(),
            path: self.path.clone(),
            timeout: self.timeout,
        })
    }
}

/// Whether `error` is a call that ran out of time ([`Error::DeadlineExceeded`]).
pub fn is_deadline_exceeded(error: &kube::Error) -> bool {
    match error {
        kube::Error::Service(source) => {
            source.downcast_ref::<Error>().is_some_and(|e| matches!(e, Error::DeadlineExceeded { .. }))
        }
        _ => false,
    }
}

/// Bounds every call: response headers (after retries) by the deadline,
/// and the body of any response but a watch by the same deadline.
#[derive(Debug, Clone)]
struct DeadlineLayer {
    timeout: Duration,
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService { inner, timeout: self.timeout }
    }
}

#[derive(Debug, Clone)]
struct DeadlineService<S> {
    inner: S,
    timeout: Duration,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<Request<Body>> for DeadlineService<S>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<DeadlineBody<B>>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let exceeded =
            Deadline { method: req.method().clone(), path: req.uri().path().to_owned(), timeout: self.timeout };
        let is_watch = req.uri().query().is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
        let deadline = tokio::time::Instant::now() + self.timeout;
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = match tokio::time::timeout_at(deadline, response).await {
                Ok(result) => result.map_err(Into::into)?,
                Err(_) => return Err(exceeded.exceeded()),
            };
            let limit = (!is_watch).then(|| (Box::pin(tokio::time::sleep_until(deadline)), exceeded));
            Ok(response.map(|inner| DeadlineBody { inner, limit }))
        })
    }
}

/// A response body that fails with [`Error::DeadlineExceeded`] once its deadline
/// passes (no deadline for watches).
pub struct DeadlineBody<B> {
    inner: B,
    limit: Option<(Pin<Box<tokio::time::Sleep>>, Deadline)>,
}

impl<B> HttpBody for DeadlineBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some((sleep, exceeded)) = &mut self.limit
            && sleep.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Some(Err(exceeded.exceeded())));
        }
        Pin::new(&mut self.inner).poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Records the outcome of every write in [`ApiHealth`].
#[derive(Clone)]
struct RecordWritesLayer {
    health: ApiHealth,
}

impl<S> Layer<S> for RecordWritesLayer {
    type Service = RecordWrites<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RecordWrites { inner, health: self.health.clone() }
    }
}

#[derive(Clone)]
struct RecordWrites<S> {
    inner: S,
    health: ApiHealth,
}

impl<S, B> Service<Request<Body>> for RecordWrites<S>
where
    S: Service<Request<Body>, Response = Response<B>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<B>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let write = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH | Method::DELETE)
            .then(|| format!("{} {}", req.method(), req.uri().path()));
        let health = self.health.clone();
        let response = self.inner.call(req);
        Box::pin(async move {
            let result = response.await;
            if let Some(write) = write {
                match &result {
                    Ok(r) if r.status().is_success() => health.record_success(SystemTime::now()),
                    Ok(r) if r.status().is_server_error() || r.status().as_u16() == 429 => {
                        health.record_failure(format!("{write}: {}", r.status()));
                    }
                    Ok(_) => {} // answered: the server is there, the request was wrong
                    // A missed deadline names the request itself.
                    Err(error) if error.is::<Error>() => health.record_failure(error.to_string()),
                    Err(error) => health.record_failure(format!("{write}: {}", crate::error_chain(&**error))),
                }
            }
            result
        })
    }
}

/// Whether writes reach the API server: the last success, the failures in
/// a row since, the last failure. Shared by the client (which records) and
/// `/readyz` and `/metrics` (which show it).
#[derive(Clone, Default)]
pub struct ApiHealth {
    state: Arc<Mutex<HealthState>>,
    last_success_timestamp: Gauge<f64, AtomicU64>,
    failed_in_a_row: Gauge,
    writes: Family<OutcomeLabels, Counter>,
}

#[derive(Default)]
struct HealthState {
    last_success: Option<SystemTime>,
    failed_in_a_row: u64,
    last_failure: Option<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

impl ApiHealth {
    /// Registers `api_last_successful_write_timestamp_seconds`,
    /// `api_failed_writes_in_a_row` and `api_writes_total{outcome}` in
    /// `registry` (give it the component's prefixed sub-registry).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "api_last_successful_write_timestamp_seconds",
            "Unix time of the last write the API server accepted (0: none yet)",
            self.last_success_timestamp.clone(),
        );
        registry.register(
            "api_failed_writes_in_a_row",
            "Writes to the API server that failed or timed out since the last one that succeeded",
            self.failed_in_a_row.clone(),
        );
        registry.register(
            "api_writes",
            "Writes to the API server by outcome: ok (2xx) or failed (no answer in time, 429, 5xx)",
            self.writes.clone(),
        );
    }

    pub(crate) fn record_success(&self, at: SystemTime) {
        let mut state = self.state.lock().expect("health lock");
        state.last_success = Some(at);
        state.failed_in_a_row = 0;
        self.last_success_timestamp.set(at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64());
        self.failed_in_a_row.set(0);
        self.writes.get_or_create(&OutcomeLabels { outcome: "ok" }).inc();
    }

    pub(crate) fn record_failure(&self, what: String) {
        let mut state = self.state.lock().expect("health lock");
        state.failed_in_a_row += 1;
        state.last_failure = Some(what);
        self.failed_in_a_row.set(i64::try_from(state.failed_in_a_row).unwrap_or(i64::MAX));
        self.writes.get_or_create(&OutcomeLabels { outcome: "failed" }).inc();
    }

    /// Why the component should not count as ready, if writes have failed
    /// [`FAILED_WRITES_BEFORE_UNREADY`] times in a row: one line with the
    /// count, the last failure and the age of the last success.
    pub fn problem(&self, now: SystemTime) -> Option<String> {
        let state = self.state.lock().expect("health lock");
        if state.failed_in_a_row < FAILED_WRITES_BEFORE_UNREADY {
            return None;
        }
        let since = match state.last_success {
            Some(at) => {
                format!("the last successful write was {}s ago", now.duration_since(at).unwrap_or_default().as_secs())
            }
            None => "no write has succeeded yet".to_owned(),
        };
        Some(format!(
            "{} API writes in a row failed or timed out (the last: {}); {since}",
            state.failed_in_a_row,
            state.last_failure.as_deref().unwrap_or("?"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// How a test server answers each request.
    #[derive(Clone, Copy)]
    enum Answer {
        /// Accepts the connection and never says anything.
        Silence,
        /// Answers every request with this status (and a `Status` body).
        Status(u16),
        /// Sends the headers of a 200 with a body it never finishes.
        HeadersOnly,
    }

    /// A plain-HTTP server on loopback; returns its URL and a count of the
    /// requests it has read.
    async fn server(answer: Answer) -> (http::Uri, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap()).parse().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(serve_connection(stream, answer, counter.clone()));
            }
        });
        (url, requests)
    }

    async fn serve_connection(mut stream: TcpStream, answer: Answer, requests: Arc<AtomicUsize>) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            // Read one request: headers, then Content-Length bytes of body.
            let (head_end, body_len) = loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                    break (end + 4, len);
                }
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            while buf.len() < head_end + body_len {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            buf.drain(..head_end + body_len);
            requests.fetch_add(1, Ordering::SeqCst);
            let reply = match answer {
                Answer::Silence => {
                    std::future::pending::<()>().await;
                    unreachable!()
                }
                Answer::Status(code) => {
                    let body = format!(r#"{{"kind":"Status","apiVersion":"v1","status":"Failure","code":{code}}}"#);
                    let len = body.len();
                    format!(
                        "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n{body}"
                    )
                }
                Answer::HeadersOnly => {
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{".into()
                }
            };
            if stream.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
            if matches!(answer, Answer::HeadersOnly) {
                std::future::pending::<()>().await;
            }
        }
    }

    fn client(url: http::Uri, timeout: Duration, health: &ApiHealth) -> Client {
        client_from_config(Config::new(url), timeout, health).unwrap()
    }

    fn request(method: &str, path: &str) -> Request<Vec<u8>> {
        Request::builder().method(method).uri(path).body(b"{}".to_vec()).unwrap()
    }

    #[test]
    fn api_timeouts_are_bounded() {
        assert_eq!(parse_api_timeout("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_api_timeout("50ms").unwrap_err(), "\"50ms\" is out of range: use between 100ms and 10m");
        assert!(parse_api_timeout("20m").unwrap_err().contains("out of range"));
        assert!(parse_api_timeout("10").unwrap_err().contains("has no unit"));
    }

    #[test]
    fn an_error_chain_says_each_cause_once_on_one_line() {
        let exceeded =
            Error::DeadlineExceeded { method: Method::PATCH, path: "/x".into(), timeout: Duration::from_millis(300) };
        // kube's message already ends with its cause's text.
        let timed_out = kube::Error::Service(Box::new(exceeded));
        assert_eq!(
            crate::error_chain(&timed_out),
            "ServiceError: no answer from the API server within 300ms (PATCH /x)"
        );
        // A message that does not say its cause gets it appended.
        let no_config =
            Error::Connect(kube::Error::Service(Box::new(std::io::Error::other("no such file\nor directory"))));
        assert_eq!(no_config.to_string(), "cannot configure a Kubernetes client (in-cluster or KUBECONFIG)");
        assert_eq!(
            crate::error_chain(&no_config),
            "cannot configure a Kubernetes client (in-cluster or KUBECONFIG): ServiceError: no such file or directory"
        );
    }

    #[tokio::test]
    async fn a_server_that_never_answers_costs_one_deadline_and_is_recorded() {
        let (url, requests) = server(Answer::Silence).await;
        let health = ApiHealth::default();
        let client = client(url, Duration::from_millis(300), &health);
        for attempt in 1..=FAILED_WRITES_BEFORE_UNREADY {
            assert_eq!(health.problem(SystemTime::now()), None, "ready before failure {attempt}");
            let error = client.request_text(request("PATCH", "/api/v1/namespaces/a/pods/b")).await.unwrap_err();
            assert!(is_deadline_exceeded(&error), "{error}");
            assert_eq!(
                error.to_string(),
                "ServiceError: no answer from the API server within 300ms (PATCH /api/v1/namespaces/a/pods/b)"
            );
        }
        assert_eq!(requests.load(Ordering::SeqCst), 3, "one request per call: silence is not retried");
        let problem = health.problem(SystemTime::now()).expect("unready after 3 failed writes");
        assert_eq!(
            problem,
            "3 API writes in a row failed or timed out (the last: \
             no answer from the API server within 300ms (PATCH /api/v1/namespaces/a/pods/b)); no write has succeeded yet"
        );
        // Reads are bounded too, but say nothing about writes.
        let error = client.request_text(request("GET", "/api/v1/pods")).await.unwrap_err();
        assert!(is_deadline_exceeded(&error), "{error}");
        assert_eq!(health.state.lock().unwrap().failed_in_a_row, 3);
    }

    #[tokio::test]
    async fn unavailable_answers_are_retried_a_bounded_number_of_times() {
        let (url, requests) = server(Answer::Status(503)).await;
        let health = ApiHealth::default();
        // A deadline far beyond the retries' backoff (0.2 + 0.4 + 0.8 s,
        // each at most doubled by jitter): the retries end the call.
        let client = client(url, Duration::from_secs(60), &health);
        let error = client.request_text(request("POST", "/api/v1/namespaces/a/pods")).await.unwrap_err();
        assert!(matches!(&error, kube::Error::Api(s) if s.code == 503), "{error}");
        assert_eq!(requests.load(Ordering::SeqCst), 1 + RETRIES as usize);
        assert_eq!(health.state.lock().unwrap().failed_in_a_row, 1, "one call, one failed write");
    }

    #[tokio::test]
    async fn a_success_resets_the_count_and_other_client_errors_count_as_answers() {
        let (ok_url, _) = server(Answer::Status(200)).await;
        let (conflict_url, _) = server(Answer::Status(409)).await;
        let (down_url, _) = server(Answer::Status(500)).await;
        let health = ApiHealth::default();
        let (ok, conflict, down) = (
            client(ok_url, Duration::from_secs(60), &health),
            client(conflict_url, Duration::from_secs(60), &health),
            client(down_url, Duration::from_secs(60), &health),
        );
        for _ in 0..FAILED_WRITES_BEFORE_UNREADY {
            down.request_text(request("PUT", "/x")).await.unwrap_err();
        }
        assert!(health.problem(SystemTime::now()).is_some());
        conflict.request_text(request("PATCH", "/x")).await.unwrap_err();
        assert_eq!(health.state.lock().unwrap().failed_in_a_row, 3, "a 409 is an answer, not a failure");
        ok.request_text(request("PATCH", "/x")).await.unwrap();
        assert_eq!(health.problem(SystemTime::now()), None);
        down.request_text(request("DELETE", "/x")).await.unwrap_err();
        let later = SystemTime::now() + Duration::from_secs(5);
        assert!(health.state.lock().unwrap().failed_in_a_row == 1 && health.problem(later).is_none());
        for _ in 1..FAILED_WRITES_BEFORE_UNREADY {
            down.request_text(request("DELETE", "/x")).await.unwrap_err();
        }
        let problem = health.problem(later).unwrap();
        assert!(problem.ends_with("the last successful write was 5s ago"), "{problem}");
        assert!(problem.contains("DELETE /x: 500 Internal Server Error"), "{problem}");
    }

    #[tokio::test]
    async fn a_stalled_body_is_cut_at_the_deadline_except_for_a_watch() {
        let (url, _) = server(Answer::HeadersOnly).await;
        let health = ApiHealth::default();
        let client = client(url, Duration::from_millis(300), &health);
        let error = client.request_text(request("GET", "/api/v1/pods")).await.unwrap_err();
        assert!(error.to_string().contains("no answer from the API server within 300ms (GET /api/v1/pods)"), "{error}");
        // A watch's body is a stream that may stay quiet for minutes.
        let watch = client.request_text(request("GET", "/api/v1/pods?watch=true&resourceVersion=1"));
        let outcome = tokio::time::timeout(Duration::from_millis(1500), watch).await;
        assert!(outcome.is_err(), "the watch was cut: {outcome:?}");
    }
}
