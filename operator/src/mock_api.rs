//! A scripted Kubernetes API for unit tests (tower-test): a `kube::Client`
//! whose every request the test receives and answers itself, so a test
//! asserts exactly which requests the operator makes, in which order, with
//! which bodies. The real-server tests in `e2e/tests/operator.rs` prove the
//! API server accepts them.

use std::future::Future;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use tower_test::mock::{Handle, SendResponse};

/// The test's end of the mocked API.
pub(crate) type ApiHandle = Handle<Request<Body>, Response<Body>>;

/// Where the test answers one request.
pub(crate) type Answer = SendResponse<Response<Body>>;

/// How long (of paused time) a test waits for a request or for either side
/// of [`run_against`]. Tests using this module run on paused time
/// (`start_paused = true`), so a missing request fails at once.
const LIMIT: Duration = Duration::from_secs(600);

/// A client whose every request `ApiHandle` receives.
pub(crate) fn client() -> (kube::Client, ApiHandle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

/// The next request, within [`LIMIT`] (at once on paused time, when
/// nothing else can happen).
pub(crate) async fn next_request(api: &mut ApiHandle) -> (Request<Body>, Answer) {
    tokio::time::timeout(LIMIT, api.next_request())
        .await
        .expect("a request, but the client made none")
        .expect("a request, but the client is gone")
}

/// The next request, which must be `method` on `path`.
pub(crate) async fn next(api: &mut ApiHandle, method: Method, path: &str) -> (Request<Body>, Answer) {
    let (req, answer) = next_request(api).await;
    assert_eq!((req.method(), req.uri().path()), (&method, path), "the next request");
    (req, answer)
}

/// The next request, which must be `method` on `path`, with its JSON body.
pub(crate) async fn next_json(api: &mut ApiHandle, method: Method, path: &str) -> (serde_json::Value, Answer) {
    let (req, answer) = next(api, method, path).await;
    (body_json(req).await, answer)
}

/// A request's body as JSON.
pub(crate) async fn body_json(req: Request<Body>) -> serde_json::Value {
    serde_json::from_slice(&req.into_body().collect_bytes().await.expect("a body")).expect("a JSON body")
}

/// Answers 200 with `value`.
pub(crate) fn respond_json(answer: Answer, value: serde_json::Value) {
    respond(answer, StatusCode::OK, &value);
}

/// Answers with a failure `Status` of `code`, as the API server does.
pub(crate) fn respond_status(answer: Answer, code: StatusCode) {
    let reason = code.canonical_reason().unwrap_or_default().replace(' ', "");
    let status = serde_json::json!({
        "apiVersion": "v1", "kind": "Status", "status": "Failure", "code": code.as_u16(),
        "reason": reason, "message": format!("the mocked API says {code}"),
    });
    respond(answer, code, &status);
}

/// Answers with `code` and the JSON `value`.
pub(crate) fn respond(answer: Answer, code: StatusCode, value: &serde_json::Value) {
    let body = Body::from(serde_json::to_vec(value).expect("JSON"));
    answer.send_response(Response::builder().status(code).body(body).expect("a response"));
}

/// Runs `client_side` (the code under test) against `script` (the test's
/// requests and answers, in order) and returns what the client side
/// returned. Fails when the script fails, when the client side stops before
/// the script's last request, or when it waits for an answer the script
/// does not give.
pub(crate) async fn run_against<T>(
    client_side: impl Future<Output = T>,
    script: impl Future<Output = ()> + Send + 'static,
) -> T {
    let script = tokio::spawn(script);
    let outcome = tokio::time::timeout(LIMIT, client_side).await;
    match tokio::time::timeout(LIMIT, script).await {
        Ok(Ok(())) => {}
        Ok(Err(failed)) => std::panic::resume_unwind(failed.into_panic()),
        Err(_) => panic!("the client side stopped before the script's last request"),
    }
    outcome.unwrap_or_else(|_| panic!("the client side waits for a request the script does not answer"))
}
