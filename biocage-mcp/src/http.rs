//! The server over streamable HTTP: every request carries the bearer token; each MCP
//! session has a sandbox of its own, closed when the session ends, when it has been
//! idle too long, or soon after its client vanished (its streams broke and nothing
//! came back).

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody as _};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use rmcp::model::ClientJsonRpcMessage;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::SessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::handler::Connection;
use crate::sandbox::Registry;
use crate::stdio::{INVALID_REQUEST, PARSE_ERROR};
use crate::{Backend, ServeError};

/// The header naming an MCP session.
const SESSION_HEADER: &str = "mcp-session-id";
/// How long a session whose streams all broke may stay without a new request.
const VANISH_GRACE: Duration = Duration::from_secs(3);
/// How often expired sessions are looked for.
const REAP_EVERY: Duration = Duration::from_millis(500);
/// Interval of SSE keep-alive comments: a vanished client is noticed within it.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Shortest token accepted.
const MIN_TOKEN: usize = 16;

/// How the HTTP server listens and admits clients.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpOptions {
    /// Where to listen (port 0: any free port; `on_listening` is told which).
    pub addr: SocketAddr,
    /// The bearer token every request must carry (`Authorization: Bearer TOKEN`).
    pub token: String,
    /// Allow an address other than loopback (the server is then reachable from other
    /// hosts, and any `Host` header is accepted).
    pub allow_remote: bool,
    /// A session without requests for this long is closed with its sandbox.
    pub idle_timeout: Duration,
    /// Most MCP sessions at once; a new client past it gets HTTP 503.
    pub max_sessions: usize,
}

impl std::fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpOptions")
            .field("addr", &self.addr)
            .field("token", &"<hidden>")
            .field("allow_remote", &self.allow_remote)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_sessions", &self.max_sessions)
            .finish()
    }
}

impl HttpOptions {
    /// Listening at `addr` for clients with `token`; loopback only, 10 minutes idle,
    /// at most 8 sessions.
    pub fn new(addr: SocketAddr, token: impl Into<String>) -> Self {
        HttpOptions {
            addr,
            token: token.into(),
            allow_remote: false,
            idle_timeout: Duration::from_secs(600),
            max_sessions: 8,
        }
    }

    /// Allows (or not) an address other than loopback.
    pub fn allow_remote(mut self, on: bool) -> Self {
        self.allow_remote = on;
        self
    }

    /// Sets the idle timeout of a session.
    pub fn idle_timeout(mut self, t: Duration) -> Self {
        self.idle_timeout = t;
        self
    }

    /// Sets the most sessions at once.
    pub fn max_sessions(mut self, n: usize) -> Self {
        self.max_sessions = n;
        self
    }

    /// Checks the options: a token of some length, a loopback address unless remote
    /// clients are allowed, a sane idle timeout and session count.
    pub fn check(&self) -> Result<(), ServeError> {
        let bad = |m: String| Err(ServeError::Options(m));
        if self.token.trim().len() < MIN_TOKEN {
            return bad(format!(
                "the bearer token must have at least {MIN_TOKEN} characters; make one with `head -c 32 /dev/urandom | base64`"
            ));
        }
        if self
            .token
            .trim()
            .chars()
            .any(|c| c.is_control() || c == ' ')
        {
            return bad("the bearer token must be one word of visible characters".into());
        }
        if !self.addr.ip().is_loopback() && !self.allow_remote {
            return bad(format!(
                "{} is not a loopback address: other hosts could reach the sandboxes; pass --allow-remote to listen there anyway",
                self.addr
            ));
        }
        if self.idle_timeout.is_zero() {
            return bad("the idle timeout must be above 0 seconds".into());
        }
        if self.max_sessions == 0 {
            return bad("the most sessions at once must be at least 1".into());
        }
        Ok(())
    }
}

/// An address to listen on from what a person typed: `HOST:PORT`, `[V6]:PORT`,
/// `localhost:PORT`, or a bare port (loopback).
pub fn parse_listen_addr(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Some(port) = text
        .strip_prefix("localhost:")
        .and_then(|p| p.parse::<u16>().ok())
    {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    Err(format!(
        "{text:?} is not an address to listen on; give HOST:PORT such as 127.0.0.1:8765, or a port"
    ))
}

/// What the gate knows of one MCP session.
struct Activity {
    /// Requests whose response is still being sent (GET streams included).
    open: usize,
    /// POSTs in progress: a session with one is never idle.
    posts: usize,
    /// The last time a request started or a POST ended.
    last_active: Instant,
    /// When a response stream broke before its end (and nothing started since).
    vanished_at: Option<Instant>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            open: 0,
            posts: 0,
            last_active: Instant::now(),
            vanished_at: None,
        }
    }

    fn expired(&self, idle: Duration) -> Option<&'static str> {
        if self.posts == 0 && self.last_active.elapsed() >= idle {
            return Some("idle");
        }
        if self.open == 0
            && self
                .vanished_at
                .is_some_and(|t| t.elapsed() >= VANISH_GRACE)
        {
            return Some("client vanished");
        }
        None
    }
}

/// Checks the token, validates bodies, admits new sessions up to the maximum, and
/// watches every session's requests.
struct Gate {
    token: [u8; 32],
    max_sessions: usize,
    body_limit: usize,
    manager: Arc<LocalSessionManager>,
    sessions: Mutex<HashMap<String, Activity>>,
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Gate {
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        let Some(given) = given else { return false };
        // Compared as digests, in time that does not depend on where they differ.
        let a = digest(given.as_bytes());
        a.iter()
            .zip(self.token.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Activity>) -> T) -> T {
        f(&mut self.sessions.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn begin(self: &Arc<Self>, id: &str, post: bool) -> Watch {
        self.with(|s| {
            let a = s.entry(id.to_string()).or_insert_with(Activity::new);
            a.open += 1;
            if post {
                a.posts += 1;
            }
            a.last_active = Instant::now();
            a.vanished_at = None;
        });
        Watch {
            gate: self.clone(),
            id: id.to_string(),
            post,
        }
    }

    /// Starts watching a session that was just created.
    fn touch(&self, id: &str) {
        self.with(|s| {
            s.entry(id.to_string()).or_insert_with(Activity::new);
        });
    }

    fn end(&self, id: &str, post: bool, finished: bool) {
        self.with(|s| {
            if let Some(a) = s.get_mut(id) {
                a.open = a.open.saturating_sub(1);
                if post {
                    a.posts = a.posts.saturating_sub(1);
                    a.last_active = Instant::now();
                }
                if !finished {
                    a.vanished_at = Some(Instant::now());
                }
            }
        });
    }

    /// The sessions to close now, and why; forgets sessions that are gone.
    fn expired(&self, live: &[Arc<str>], idle: Duration) -> Vec<(Arc<str>, &'static str)> {
        self.with(|s| {
            s.retain(|id, _| live.iter().any(|l| l.as_ref() == id.as_str()));
            live.iter()
                .filter_map(|id| {
                    let a = s.entry(id.to_string()).or_insert_with(Activity::new);
                    a.expired(idle).map(|why| (id.clone(), why))
                })
                .collect()
        })
    }
}

/// One request of a session, from its start to the end of its response (or until the
/// response stream broke).
struct Watch {
    gate: Arc<Gate>,
    id: String,
    post: bool,
}

impl Watch {
    fn finish(self, finished: bool) {
        self.gate.end(&self.id, self.post, finished);
        std::mem::forget(self);
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.gate.end(&self.id, self.post, false);
    }
}

/// A response body that tells its [`Watch`] whether it was sent to the end.
struct Watched {
    inner: Body,
    watch: Option<Watch>,
    ended: bool,
}

impl axum::body::HttpBody for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(watch) = self.watch.take() {
            watch.finish(self.ended || self.inner.is_end_stream());
        }
    }
}

/// A JSON-RPC error as an HTTP response.
fn rpc_error(status: StatusCode, code: i64, message: &str) -> Response {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": {"code": code, "message": message},
    });
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_string(),
    )
        .into_response()
}

/// `response`, ending its connection: sent before the request's body was read, so the
/// connection cannot carry another request.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

async fn gate(State(gate): State<Arc<Gate>>, request: Request, next: Next) -> Response {
    if !gate.authorized(request.headers()) {
        let mut response = rpc_error(
            StatusCode::UNAUTHORIZED,
            -32001,
            "Unauthorized: send the server's token as Authorization: Bearer TOKEN",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"biocage\""),
        );
        return closing(response);
    }
    let session = request
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let post = request.method() == Method::POST;
    let request = if post {
        // A body that is not a JSON-RPC message gets a JSON-RPC error, not a crash
        // and not a bare HTTP error.
        let (parts, body) = request.into_parts();
        let bytes = match axum::body::to_bytes(body, gate.body_limit).await {
            Ok(b) => b,
            Err(_) => {
                return closing(rpc_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    INVALID_REQUEST,
                    &format!(
                        "Invalid Request: the body is over the {}-byte cap",
                        gate.body_limit
                    ),
                ))
            }
        };
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                PARSE_ERROR,
                &format!("Parse error: the body is not JSON ({e})"),
            );
        }
        if let Err(e) = serde_json::from_slice::<ClientJsonRpcMessage>(&bytes) {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                INVALID_REQUEST,
                &format!(
                    "Invalid Request: not a JSON-RPC 2.0 message this server understands ({e})"
                ),
            );
        }
        Request::from_parts(parts, Body::from(bytes))
    } else {
        request
    };
    if post && session.is_none() {
        let count = gate.manager.sessions.read().await.len();
        if count >= gate.max_sessions {
            return rpc_error(
                StatusCode::SERVICE_UNAVAILABLE,
                -32000,
                &format!(
                    "this server already holds its maximum of {} sessions (each with a sandbox); try again later",
                    gate.max_sessions
                ),
            );
        }
    }
    let delete = request.method() == Method::DELETE;
    let watch = session.as_deref().map(|id| gate.begin(id, post));
    let mut response = next.run(request).await;
    if delete && response.status() == StatusCode::ACCEPTED {
        // The session is gone once DELETE returns; clients look for 200 or 204.
        *response.status_mut() = StatusCode::NO_CONTENT;
    }
    let created = response
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| session.as_deref() != Some(*id))
        .map(String::from);
    if let Some(id) = created {
        gate.touch(&id);
        tracing::info!(session = %id, "new MCP session");
    }
    match watch {
        None => response,
        Some(watch) => {
            let (parts, body) = response.into_parts();
            Response::from_parts(
                parts,
                Body::new(Watched {
                    inner: body,
                    watch: Some(watch),
                    ended: false,
                }),
            )
        }
    }
}

/// Closes sessions that expired (idle, or their client vanished), and their sandboxes.
async fn reap(gate: Arc<Gate>, registry: Arc<Registry>, idle: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(REAP_EVERY) => {}
            () = stop.cancelled() => return,
        }
        let live: Vec<Arc<str>> = gate.manager.sessions.read().await.keys().cloned().collect();
        for (id, why) in gate.expired(&live, idle) {
            tracing::info!(session = %id, "closing the MCP session and its sandbox: {why}");
            if let Some(cell) = registry.unbind(&id) {
                tokio::spawn(async move { cell.close().await });
            }
            if let Err(e) = gate.manager.close_session(&id).await {
                tracing::warn!(session = %id, "closing the MCP session: {e}");
            }
        }
    }
}

/// Serves MCP clients over streamable HTTP at `opts.addr` (path `/mcp`) until
/// `shutdown` completes; `on_listening` is told the bound address. Every sandbox is
/// closed before this returns.
pub async fn serve_http(
    backend: Arc<Backend>,
    opts: HttpOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr) + Send,
) -> Result<(), ServeError> {
    opts.check()?;
    let limit = crate::request_limit(&backend.config);
    let mut manager = LocalSessionManager::default();
    // Expiry is the gate's: rmcp's own keep-alive would end a session in the middle
    // of a long, quiet run.
    manager.session_config.keep_alive = None;
    let manager = Arc::new(manager);
    let registry = Arc::new(Registry::default());
    let stop = CancellationToken::new();
    let mut config = StreamableHttpServerConfig::default()
        .with_cancellation_token(stop.child_token())
        .with_sse_keep_alive(Some(KEEP_ALIVE))
        .with_max_request_body_bytes(limit);
    if opts.allow_remote {
        config = config.disable_allowed_hosts();
    }
    let factory_backend = backend.clone();
    let factory_registry = registry.clone();
    let service = StreamableHttpService::new(
        move || {
            Ok(Connection::http(
                factory_backend.clone(),
                factory_registry.clone(),
            ))
        },
        manager.clone(),
        config,
    );
    let gate_state = Arc::new(Gate {
        token: digest(opts.token.trim().as_bytes()),
        max_sessions: opts.max_sessions,
        body_limit: limit,
        manager: manager.clone(),
        sessions: Mutex::new(HashMap::new()),
    });
    let app = Router::new()
        .nest_service("/mcp", service)
        .layer(middleware::from_fn_with_state(gate_state.clone(), gate));
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: opts.addr.to_string(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: opts.addr.to_string(),
        source,
    })?;
    if !local.ip().is_loopback() {
        tracing::info!("listening on {local}, which is not loopback: other hosts can reach it (with the token)");
    }
    on_listening(local);
    let reaper = tokio::spawn(reap(
        gate_state,
        registry.clone(),
        opts.idle_timeout,
        stop.clone(),
    ));
    let stopping = stop.clone();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("stopping: closing every session and sandbox");
            stopping.cancel();
        })
        .into_future();
    tokio::pin!(served);
    let outcome = tokio::select! {
        r = &mut served => r.map_err(|e| ServeError::Transport(e.to_string())),
        // Open streams end with the cancellation; past a few seconds, stop waiting.
        () = async { stop.cancelled().await; tokio::time::sleep(Duration::from_secs(5)).await } => Ok(()),
    };
    stop.cancel();
    let _ = reaper.await;
    registry.close_all().await;
    backend.shutdown_pool().await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate_with(token: &str) -> Gate {
        Gate {
            token: digest(token.as_bytes()),
            max_sessions: 2,
            body_limit: 1 << 20,
            manager: Arc::new(LocalSessionManager::default()),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    fn auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn only_the_right_bearer_token_passes() {
        let g = gate_with("0123456789abcdef0123");
        assert!(g.authorized(&auth("Bearer 0123456789abcdef0123")));
        assert!(g.authorized(&auth("bearer  0123456789abcdef0123 ")));
        assert!(!g.authorized(&auth("Bearer 0123456789abcdef012")));
        assert!(!g.authorized(&auth("Basic 0123456789abcdef0123")));
        assert!(!g.authorized(&auth("0123456789abcdef0123")));
        assert!(!g.authorized(&HeaderMap::new()));
    }

    #[test]
    fn listen_addresses_default_to_loopback() {
        assert_eq!(
            parse_listen_addr("8765").unwrap(),
            "127.0.0.1:8765".parse().unwrap()
        );
        assert_eq!(
            parse_listen_addr("localhost:1").unwrap(),
            "127.0.0.1:1".parse().unwrap()
        );
        assert_eq!(
            parse_listen_addr("[::1]:9").unwrap(),
            "[::1]:9".parse().unwrap()
        );
        assert!(parse_listen_addr("example.com:80").is_err());
    }

    #[test]
    fn remote_addresses_and_short_tokens_are_refused() {
        let token = "0123456789abcdef0123";
        let local = HttpOptions::new("127.0.0.1:0".parse().unwrap(), token);
        assert!(local.check().is_ok());
        let remote = HttpOptions::new("0.0.0.0:0".parse().unwrap(), token);
        assert!(remote
            .check()
            .unwrap_err()
            .to_string()
            .contains("--allow-remote"));
        assert!(remote.allow_remote(true).check().is_ok());
        let short = HttpOptions::new("127.0.0.1:0".parse().unwrap(), "short");
        assert!(short.check().unwrap_err().to_string().contains("16"));
        assert!(!format!("{local:?}").contains(token));
    }

    #[tokio::test]
    async fn sessions_expire_when_idle_or_when_every_stream_broke() {
        let g = Arc::new(gate_with("0123456789abcdef0123"));
        let id: Arc<str> = "s1".into();
        let live = [id.clone()];
        // A POST in progress is never idle.
        let post = g.begin("s1", true);
        assert!(g.expired(&live, Duration::ZERO).is_empty());
        post.finish(true);
        assert_eq!(g.expired(&live, Duration::ZERO)[0].1, "idle");
        assert!(g.expired(&live, Duration::from_secs(60)).is_empty());
        // A GET stream stays open: a broken POST is not a vanished client.
        let stream = g.begin("s1", false);
        drop(g.begin("s1", true));
        g.with(|s| s.get_mut("s1").unwrap().vanished_at = Some(Instant::now() - VANISH_GRACE));
        assert!(g.expired(&live, Duration::from_secs(60)).is_empty());
        drop(stream);
        g.with(|s| s.get_mut("s1").unwrap().vanished_at = Some(Instant::now() - VANISH_GRACE));
        assert_eq!(
            g.expired(&live, Duration::from_secs(60))[0].1,
            "client vanished"
        );
        // Sessions that are gone are forgotten.
        assert!(g.expired(&[], Duration::ZERO).is_empty());
        assert!(g.with(|s| s.is_empty()));
    }
}
