//! Real Step Functions executions on moto, with our own Rust code as the Lambda functions.
//!
//! moto's Step Functions interpreter (switched on by `scripts/emulators.sh` at start) sends every
//! AWS call a Task state makes, Lambda Invoke above all, to `http://localhost:$MOTO_PORT`, and
//! the scripts start moto with `MOTO_PORT` = `SYNC_TEST_SFN_PROXY_PORT`. The proxy here listens on
//! that port: it answers Lambda Invoke (`POST /2015-03-31/functions/<name or ARN>/invocations`)
//! with handlers the test registered, the way Lambda does (a handler's error is a 200 with
//! `X-Amz-Function-Error: Unhandled` and `{"errorType", "errorMessage"}`, which the definition's
//! `Retry` and `Catch` match on `errorType`), records every invocation, and forwards every other
//! request to moto unchanged (method, path, query, headers, body).
//!
//! One process-wide server, shared by the tests of this binary that run at the same time: each
//! test opens its own [`SfnProxy`] scope, whose functions are named uniquely
//! (`<scope>-<name>`), so tests neither take turns nor see each other's invocations. The server
//! binds the port while at least one scope is open and lets it go after the last one, so test
//! processes sharing hand-started emulators take turns on the port ([`SfnProxy::start`] waits
//! for it). Handlers run on the runtime of the test that registered them (its SDK clients work
//! there); that test must await asynchronously (as [`wait_for_execution`] does) while an
//! execution runs, never block its thread.
//!
//! The helpers below create a state machine from an ASL definition with `${Name}` substitutions
//! (moto does not apply `DefinitionSubstitutions`), start an execution (always named: moto's
//! interpreter names an unnamed one `None`, and a second one with the same input is taken for the
//! first), and wait for it, returning its status, output and history.

use crate::harness;
use aws_sdk_sfn::types::{ExecutionStatus, HistoryEvent};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use futures::future::BoxFuture;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// What a handler returns: the function's result, or its error as `(errorType, errorMessage)`.
pub type HandlerResult = Result<Value, (String, String)>;

/// A Lambda function's code: the invocation's payload in, its result out.
pub type Handler = Arc<dyn Fn(Value) -> BoxFuture<'static, HandlerResult> + Send + Sync>;

/// A [`Handler`] from an async closure.
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Value) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    Arc::new(move |input| Box::pin(f(input)))
}

/// One Lambda invocation the proxy answered.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The name the function was registered under (without the scope's prefix).
    pub function: String,
    pub input: Value,
    pub outcome: HandlerResult,
    pub started_at: SystemTime,
    pub duration: Duration,
}

/// Account and region of the function ARNs handed out (any would do: the proxy goes by name).
pub const ACCOUNT: &str = "123456789012";
pub const REGION: &str = "us-east-1";
/// The role every test state machine gets (moto checks its form only).
pub const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/sync-test-sfn";

/// How long [`SfnProxy::start`] waits for the port while another process holds it.
const PORT_WAIT: Duration = Duration::from_secs(180);

struct Registered {
    scope: u64,
    name: String,
    handler: Handler,
    runtime: tokio::runtime::Handle,
}

struct RunningServer {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

#[derive(Default)]
struct ServerState {
    scopes: usize,
    running: Option<RunningServer>,
}

#[derive(Default)]
struct Shared {
    /// By full function name.
    functions: Mutex<HashMap<String, Registered>>,
    /// By scope.
    records: Mutex<HashMap<u64, Vec<Invocation>>>,
    /// Function identifiers invoked while nothing was registered under them.
    unregistered: Mutex<Vec<String>>,
    server: Mutex<ServerState>,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(Shared::default)
}

/// A poisoned lock (a test panicked holding it) still guards consistent data here.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One test's use of the proxy: its functions and their invocations. Dropping it unregisters
/// the functions (an invocation of one then gets Lambda's 404).
pub struct SfnProxy {
    scope: u64,
    prefix: String,
}

impl SfnProxy {
    /// A new scope, the proxy listening on `SYNC_TEST_SFN_PROXY_PORT` (bound now if no other
    /// scope has it; waits while another process holds the port).
    pub async fn start() -> SfnProxy {
        static NEXT_SCOPE: AtomicU64 = AtomicU64::new(1);
        let port = harness::sfn_proxy_port();
        let deadline = Instant::now() + PORT_WAIT;
        loop {
            let bound = {
                let mut state = lock(&shared().server);
                if state.running.is_none() {
                    match spawn_server(port) {
                        Ok(server) => state.running = Some(server),
                        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {}
                        Err(e) => panic!(
                            "the Step Functions proxy cannot listen on 127.0.0.1:{port}: {e}"
                        ),
                    }
                }
                if state.running.is_some() {
                    state.scopes += 1;
                }
                state.running.is_some()
            };
            if bound {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "127.0.0.1:{port} (SYNC_TEST_SFN_PROXY_PORT) stayed taken for {PORT_WAIT:?}: another \
                 test process using the same emulators holds it"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let scope = NEXT_SCOPE.fetch_add(1, Ordering::Relaxed);
        lock(&shared().records).insert(scope, Vec::new());
        SfnProxy {
            scope,
            prefix: harness::unique_name("sfn"),
        }
    }

    /// Register `handler` as function `name` (ASCII letters, digits, `-`, `_`); returns the
    /// function's ARN, to substitute into a definition. Must be called inside the test's
    /// runtime: the handler runs there. Registering a name again replaces its handler.
    pub fn register(&self, name: &str, handler: Handler) -> String {
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "function name {name:?}: letters, digits, - and _ only"
        );
        let full = self.function_name(name);
        assert!(
            full.len() <= 64,
            "function name {full} is over 64 characters"
        );
        lock(&shared().functions).insert(
            full,
            Registered {
                scope: self.scope,
                name: name.to_owned(),
                handler,
                runtime: tokio::runtime::Handle::current(),
            },
        );
        self.function_arn(name)
    }

    /// The function's real (Lambda) name: unique to this scope.
    pub fn function_name(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    pub fn function_arn(&self, name: &str) -> String {
        format!(
            "arn:aws:lambda:{REGION}:{ACCOUNT}:function:{}",
            self.function_name(name)
        )
    }

    /// Every invocation of this scope's functions so far, in the order they finished.
    pub fn invocations(&self) -> Vec<Invocation> {
        lock(&shared().records)
            .get(&self.scope)
            .cloned()
            .unwrap_or_default()
    }

    /// The invocations of one function (by its registered name).
    pub fn invocations_of(&self, name: &str) -> Vec<Invocation> {
        self.invocations()
            .into_iter()
            .filter(|i| i.function == name)
            .collect()
    }

    /// Wait (polling, asynchronously) until `name` has finished at least `count` invocations;
    /// returns them. Panics after `timeout`.
    pub async fn wait_for_invocations(
        &self,
        name: &str,
        count: usize,
        timeout: Duration,
    ) -> Vec<Invocation> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.invocations_of(name);
            if seen.len() >= count {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "{name} was invoked {} times in {timeout:?}, expected {count}; all invocations: {:#?}",
                seen.len(),
                self.invocations()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Lambda functions invoked (by any scope's state machines) while not registered: a
    /// definition naming a function the test did not register, or an execution outliving its
    /// test. Process-wide.
    pub fn unregistered_invocations() -> Vec<String> {
        lock(&shared().unregistered).clone()
    }
}

impl Drop for SfnProxy {
    fn drop(&mut self) {
        lock(&shared().functions).retain(|_, r| r.scope != self.scope);
        lock(&shared().records).remove(&self.scope);
        let stopped = {
            let mut state = lock(&shared().server);
            state.scopes -= 1;
            if state.scopes == 0 {
                state.running.take()
            } else {
                None
            }
        };
        if let Some(server) = stopped {
            let _ = server.stop.send(());
            let _ = server.thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Ctx {
    client: reqwest::Client,
    moto_url: String,
}

/// Serve on 127.0.0.1:`port` from a thread of its own (with its own runtime, so that it outlives
/// the test that started it) until told to stop.
fn spawn_server(port: u16) -> std::io::Result<RunningServer> {
    let moto_url = harness::emulators()
        .moto_url
        .trim_end_matches('/')
        .to_owned();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("sfn-proxy".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("sfn-proxy")
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let listener = match rt.block_on(async { bind(port) }) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let client = match reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .build()
            {
                Ok(c) => c,
                Err(e) => {
                    let _ = ready_tx.send(Err(std::io::Error::other(e)));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            let app = axum::Router::new()
                .fallback(route)
                .with_state(Ctx { client, moto_url });
            rt.block_on(async move {
                tokio::select! {
                    r = axum::serve(listener, app).into_future() => {
                        if let Err(e) = r {
                            eprintln!("sfn proxy: server stopped: {e}");
                        }
                    }
                    _ = stop_rx => {}
                }
            });
            // Connections and in-flight requests go with the runtime; the port is free.
            rt.shutdown_background();
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(RunningServer { stop, thread }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(std::io::Error::other("the proxy's thread died starting")),
    }
}

fn bind(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    socket.listen(1024)
}

async fn route(State(ctx): State<Ctx>, req: Request) -> Response {
    if req.method() == Method::POST
        && let Some(function) = invoked_function(req.uri().path())
    {
        return invoke(function, req).await;
    }
    forward(&ctx, req).await
}

/// The function identifier of a Lambda Invoke path, percent-decoded.
fn invoked_function(path: &str) -> Option<String> {
    let id = path
        .strip_prefix("/2015-03-31/functions/")?
        .strip_suffix("/invocations")?;
    if id.is_empty() || id.contains('/') {
        return None;
    }
    Some(
        percent_encoding::percent_decode_str(id)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

/// The function name in any form Lambda accepts: a name, `name:qualifier`, a partial ARN
/// (`123456789012:function:name`) or a full one, with or without a qualifier.
fn function_name(id: &str) -> &str {
    let rest = match id.find("function:") {
        Some(i) => &id[i + "function:".len()..],
        None => id,
    };
    rest.split(':').next().unwrap_or(rest)
}

async fn invoke(id: String, req: Request) -> Response {
    let invocation_type = req
        .headers()
        .get("x-amz-invocation-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("RequestResponse")
        .to_owned();
    let body = match axum::body::to_bytes(req.into_body(), usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            return lambda_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                &e.to_string(),
            );
        }
    };
    let input: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return lambda_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequestContentException",
                    &format!("Could not parse request body into json: {e}"),
                );
            }
        }
    };
    let name = function_name(&id);
    let found = lock(&shared().functions).get(name).map(|r| {
        (
            r.scope,
            r.name.clone(),
            r.handler.clone(),
            r.runtime.clone(),
        )
    });
    let Some((scope, registered_name, handler, runtime)) = found else {
        lock(&shared().unregistered).push(id.clone());
        return lambda_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!("Function not found: {id} (not registered with the test proxy)"),
        );
    };
    if invocation_type == "DryRun" {
        return lambda_response(StatusCode::NO_CONTENT, HeaderMap::new(), Bytes::new());
    }
    let run = async move {
        let started_at = SystemTime::now();
        let t0 = Instant::now();
        // On the registering test's runtime: its clients, its tasks.
        let outcome = match runtime.spawn(handler(input.clone())).await {
            Ok(outcome) => outcome,
            Err(e) if e.is_panic() => {
                let panic = e.into_panic();
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "the handler panicked".to_owned());
                Err(("Runtime.HandlerPanicked".to_owned(), message))
            }
            Err(e) => Err(("Runtime.HandlerCancelled".to_owned(), e.to_string())),
        };
        if let Some(records) = lock(&shared().records).get_mut(&scope) {
            records.push(Invocation {
                function: registered_name,
                input,
                outcome: outcome.clone(),
                started_at,
                duration: t0.elapsed(),
            });
        }
        outcome
    };
    if invocation_type == "Event" {
        tokio::spawn(run);
        return lambda_response(StatusCode::ACCEPTED, HeaderMap::new(), Bytes::new());
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        "x-amz-executed-version",
        HeaderValue::from_static("$LATEST"),
    );
    match run.await {
        Ok(output) => lambda_response(StatusCode::OK, headers, Bytes::from(output.to_string())),
        Err((error_type, message)) => {
            headers.insert(
                "x-amz-function-error",
                HeaderValue::from_static("Unhandled"),
            );
            let body = json!({ "errorType": error_type, "errorMessage": message, "trace": [] });
            lambda_response(StatusCode::OK, headers, Bytes::from(body.to_string()))
        }
    }
}

/// An error of the Lambda service itself (not of the function), as Lambda sends it.
fn lambda_error(status: StatusCode, code: &'static str, message: &str) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("x-amzn-errortype", HeaderValue::from_static(code));
    let body = json!({ "Type": "User", "message": message });
    lambda_response(status, headers, Bytes::from(body.to_string()))
}

fn response(status: StatusCode, headers: HeaderMap, body: Bytes) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// A Lambda answer: with a request ID, as Lambda's (moto's interpreter reads it from a Lambda
/// error, and fails with `States.Runtime` / `KeyError('RequestId')` without it).
fn lambda_response(status: StatusCode, mut headers: HeaderMap, body: Bytes) -> Response {
    if let Ok(id) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        headers.insert("x-amzn-requestid", id);
    }
    response(status, headers, body)
}

/// Headers that describe one hop (or the body's framing, which the client re-does), not the
/// request.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
    )
}

fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if !hop_by_hop(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Pass a request to moto as it came (the Host header too: it is signed), and its answer back.
async fn forward(ctx: &Ctx, req: Request) -> Response {
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    let method = req.method().clone();
    let headers = end_to_end(req.headers());
    let body = match axum::body::to_bytes(req.into_body(), usize::MAX).await {
        Ok(b) => b,
        Err(e) => return bad_gateway(&format!("reading the request body: {e}")),
    };
    let url = format!("{}{path_and_query}", ctx.moto_url);
    let sent = ctx
        .client
        .request(method, &url)
        .headers(headers)
        .body(body)
        .send()
        .await;
    let upstream = match sent {
        Ok(r) => r,
        Err(e) => return bad_gateway(&format!("forwarding to {url}: {e}")),
    };
    let status = upstream.status();
    let headers = end_to_end(upstream.headers());
    match upstream.bytes().await {
        Ok(body) => response(status, headers, body),
        Err(e) => bad_gateway(&format!("reading moto's answer from {url}: {e}")),
    }
}

fn bad_gateway(message: &str) -> Response {
    eprintln!("sfn proxy: {message}");
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response(
        StatusCode::BAD_GATEWAY,
        headers,
        Bytes::from(format!("sfn test proxy: {message}")),
    )
}

// ---------------------------------------------------------------------------------------------
// State machines and executions
// ---------------------------------------------------------------------------------------------

/// Replace each `${Name}` in `definition` by its value (what CloudFormation's
/// `DefinitionSubstitutions` does); panics when a `${...}` is left without one.
pub fn substitute(definition: &str, substitutions: &[(&str, &str)]) -> String {
    let mut out = definition.to_owned();
    for (name, value) in substitutions {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    if let Some(start) = out.find("${") {
        let end = out[start..].find('}').map_or(out.len(), |e| start + e + 1);
        panic!("no substitution for {} in the definition", &out[start..end]);
    }
    out
}

/// Create a uniquely named Standard state machine from an ASL definition after [`substitute`];
/// returns its ARN. moto's interpreter parses the definition here and rejects what it cannot run.
pub async fn create_state_machine(
    sfn: &aws_sdk_sfn::Client,
    definition: &str,
    substitutions: &[(&str, &str)],
) -> String {
    let definition = substitute(definition, substitutions);
    let name = harness::unique_name("it-sm");
    let out = sfn
        .create_state_machine()
        .name(&name)
        .definition(&definition)
        .role_arn(ROLE_ARN)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "create state machine {name}: {}",
                aws_sdk_sfn::error::DisplayErrorContext(&e)
            )
        });
    out.state_machine_arn().to_owned()
}

/// Start an execution (uniquely named) with `input`; returns its ARN.
pub async fn start_execution(
    sfn: &aws_sdk_sfn::Client,
    state_machine_arn: &str,
    input: &Value,
) -> String {
    let out = sfn
        .start_execution()
        .state_machine_arn(state_machine_arn)
        .name(harness::unique_name("it-ex"))
        .input(input.to_string())
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "start an execution of {state_machine_arn}: {}",
                aws_sdk_sfn::error::DisplayErrorContext(&e)
            )
        });
    out.execution_arn().to_owned()
}

/// A finished execution.
#[derive(Debug, Clone)]
pub struct ExecutionResult {
    pub arn: String,
    pub status: ExecutionStatus,
    /// The execution's output (parsed), when it succeeded.
    pub output: Option<Value>,
    /// The error and cause, when it failed.
    pub error: Option<String>,
    pub cause: Option<String>,
    pub history: Vec<HistoryEvent>,
}

impl ExecutionResult {
    /// The names of the states entered, in order (Map iterations' states included).
    pub fn entered_states(&self) -> Vec<String> {
        self.history
            .iter()
            .filter_map(|e| e.state_entered_event_details())
            .map(|d| d.name().to_owned())
            .collect()
    }

    /// The history's event types, in order (for assertions and failure messages).
    pub fn event_types(&self) -> Vec<String> {
        self.history
            .iter()
            .map(|e| e.r#type().as_str().to_owned())
            .collect()
    }

    /// The output, panicking (with the history) unless the execution succeeded.
    pub fn succeeded(&self) -> &Value {
        assert_eq!(
            self.status,
            ExecutionStatus::Succeeded,
            "execution {} ended {:?}: error {:?}, cause {:?}; events {:?}",
            self.arn,
            self.status,
            self.error,
            self.cause,
            self.event_types()
        );
        self.output
            .as_ref()
            .expect("a succeeded execution has an output")
    }
}

/// Poll `DescribeExecution` until the execution is no longer RUNNING, then read its history.
/// Past `timeout` the execution is stopped and the test fails, showing the history so far.
pub async fn wait_for_execution(
    sfn: &aws_sdk_sfn::Client,
    execution_arn: &str,
    timeout: Duration,
) -> ExecutionResult {
    let deadline = Instant::now() + timeout;
    loop {
        let d = sfn
            .describe_execution()
            .execution_arn(execution_arn)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "describe execution {execution_arn}: {}",
                    aws_sdk_sfn::error::DisplayErrorContext(&e)
                )
            });
        if *d.status() != ExecutionStatus::Running {
            let output = d.output().map(|o| {
                serde_json::from_str(o).unwrap_or_else(|e| panic!("execution output {o:?}: {e}"))
            });
            return ExecutionResult {
                arn: execution_arn.to_owned(),
                status: d.status().clone(),
                output,
                error: d.error().map(str::to_owned),
                cause: d.cause().map(str::to_owned),
                history: execution_history(sfn, execution_arn).await,
            };
        }
        if Instant::now() >= deadline {
            let history = execution_history(sfn, execution_arn).await;
            let _ = sfn
                .stop_execution()
                .execution_arn(execution_arn)
                .error("Test.Timeout")
                .send()
                .await;
            let events: Vec<_> = history
                .iter()
                .map(|e| e.r#type().as_str().to_owned())
                .collect();
            panic!(
                "execution {execution_arn} still RUNNING after {timeout:?} (stopped now); events so far: {events:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every event of an execution's history, oldest first.
pub async fn execution_history(
    sfn: &aws_sdk_sfn::Client,
    execution_arn: &str,
) -> Vec<HistoryEvent> {
    let mut events = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let out = sfn
            .get_execution_history()
            .execution_arn(execution_arn)
            .max_results(1000)
            .set_next_token(token.take())
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "get the history of {execution_arn}: {}",
                    aws_sdk_sfn::error::DisplayErrorContext(&e)
                )
            });
        events.extend(out.events().iter().cloned());
        match out.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_owned()),
            _ => return events,
        }
    }
}

/// Start an execution and wait for it.
pub async fn run_execution(
    sfn: &aws_sdk_sfn::Client,
    state_machine_arn: &str,
    input: &Value,
    timeout: Duration,
) -> ExecutionResult {
    let arn = start_execution(sfn, state_machine_arn, input).await;
    wait_for_execution(sfn, &arn, timeout).await
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn function_names_in_every_form() {
        for id in [
            "f-1",
            "f-1:live",
            "123456789012:function:f-1",
            "arn:aws:lambda:us-east-1:123456789012:function:f-1",
            "arn:aws:lambda:us-east-1:123456789012:function:f-1:$LATEST",
        ] {
            assert_eq!(function_name(id), "f-1", "{id}");
        }
        assert_eq!(
            invoked_function(
                "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction%3Af-1/invocations"
            )
            .as_deref(),
            Some("arn:aws:lambda:us-east-1:123456789012:function:f-1")
        );
        assert_eq!(
            invoked_function("/2015-03-31/functions/f/configuration"),
            None
        );
        assert_eq!(invoked_function("/2015-03-31/functions//invocations"), None);
    }

    #[test]
    fn substitutions_are_all_applied() {
        let d = r#"{"Resource": "${A}", "Next": "${B}"}"#;
        assert_eq!(
            substitute(d, &[("A", "arn:a"), ("B", "b")]),
            r#"{"Resource": "arn:a", "Next": "b"}"#
        );
        let missing = std::panic::catch_unwind(|| substitute(d, &[("A", "arn:a")]));
        assert!(missing.is_err(), "a ${{B}} left unsubstituted must fail");
    }
}
