//! The webhook source: kube-apiserver's audit webhook backend
//! (`--audit-webhook-config-file`) POSTs `audit.k8s.io/v1` `EventList`s as
//! JSON; each accepted batch is appended to the [spool](super::spool) and
//! made durable *before* the 200 answer, so an acknowledged batch survives a
//! crash. The apiserver retries a batch answered 429 or 5xx (with backoff),
//! which is how a full spool pushes back instead of dropping.
//!
//! Answers carry a Kubernetes `Status` object, so the apiserver's log shows
//! the reason.

use super::spool::{Spool, SpoolError};
use crate::ops::metrics::WebhookMetrics;
use crate::transport::limits::{Budget, Held, MinRate};
use crate::transport::listen::{self, Listener, Observer, Slot};
use crate::transport::tls::ReloadingAcceptor;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, warn};

/// What the endpoint needs.
pub struct Webhook {
    pub spool: Arc<Mutex<Spool>>,
    pub max_body_bytes: usize,
    /// Bodies held at once, across connections.
    pub budget: Arc<Budget>,
    /// Requests being parsed and spooled; taken only once a body is in.
    pub processing: tokio::sync::Semaphore,
    pub limits: WebhookLimits,
    pub token: Option<TokenFile>,
    pub metrics: WebhookMetrics,
    /// Per-connection refusals: the first 10 of each 10 s, then a count.
    pub warn: Mutex<crate::ops::logging::RateLimit>,
}

/// Connection limits and deadlines (`webhook.*`).
#[derive(Debug, Clone, Copy)]
pub struct WebhookLimits {
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    pub handshake_timeout: Duration,
    pub min_transfer_rate: u64,
}

/// A bearer token read from a file, re-read when the file changes.
pub struct TokenFile {
    path: PathBuf,
    cached: Mutex<(Option<SystemTime>, Option<String>)>,
}

impl TokenFile {
    pub fn new(path: PathBuf) -> Self {
        TokenFile {
            path,
            cached: Mutex::new((None, None)),
        }
    }

    /// The current token (trimmed), or why there is none.
    pub fn current(&self) -> Result<String, String> {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .map_err(|e| format!("bearer_token_file {}: {e}", self.path.display()))?;
        let mut c = self
            .cached
            .lock()
            .map_err(|_| "internal: token lock poisoned".to_string())?;
        if c.0 != Some(mtime) || c.1.is_none() {
            let t = std::fs::read_to_string(&self.path)
                .map_err(|e| format!("bearer_token_file {}: {e}", self.path.display()))?;
            let t = t.trim().to_string();
            if t.is_empty() {
                return Err(format!(
                    "bearer_token_file {} is empty",
                    self.path.display()
                ));
            }
            *c = (Some(mtime), Some(t));
        }
        c.1.clone().ok_or_else(|| "no token".to_string())
    }
}

/// Equal without an early exit (the token is a secret).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a request was refused: HTTP status, metric reason, message.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: StatusCode,
    pub reason: &'static str,
    pub message: String,
}

fn refuse(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        reason,
        message: message.into(),
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(rename = "apiVersion", borrow)]
    api_version: Option<Cow<'a, str>>,
    #[serde(borrow)]
    items: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
struct ItemHead<'a> {
    #[serde(borrow)]
    kind: Option<Cow<'a, str>>,
}

/// Appends `json` without its newlines: outside strings they are only
/// whitespace, and inside strings JSON does not allow them raw.
fn push_one_line(out: &mut Vec<u8>, json: &[u8]) {
    let mut rest = json;
    while let Some(i) = memchr::memchr2(b'\n', b'\r', rest) {
        out.extend_from_slice(&rest[..i]);
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
}

/// Turns a request body (an `EventList`, or one `Event`) into audit log
/// lines appended to `out`, each ending in `\n`: the items of a list get the
/// `kind`/`apiVersion` the apiserver writes on every log line (its webhook
/// leaves them out of list items). Returns the number of events.
pub fn to_lines(body: &[u8], out: &mut Vec<u8>) -> Result<usize, Refusal> {
    let bad = |reason, m: String| refuse(StatusCode::BAD_REQUEST, reason, m);
    let text = std::str::from_utf8(body)
        .map_err(|e| bad("invalid_utf8", format!("the body is not UTF-8: {e}")))?;
    if text.trim().is_empty() {
        return Err(bad("empty", "the body is empty".into()));
    }
    let env: Envelope = serde_json::from_str(text).map_err(|e| {
        bad(
            "invalid_json",
            format!("the body is not an audit.k8s.io EventList or Event in JSON: {e}"),
        )
    })?;
    let api = env.api_version.as_deref().unwrap_or("audit.k8s.io/v1");
    if !api.starts_with("audit.k8s.io/") {
        return Err(bad(
            "wrong_kind",
            format!("apiVersion {api:?} is not audit.k8s.io/v1"),
        ));
    }
    match env.kind.as_deref() {
        Some("EventList") => {
            let items = env.items.unwrap_or_default();
            for (i, raw) in items.iter().enumerate() {
                let j = raw.get();
                if !j.starts_with('{') {
                    return Err(bad(
                        "not_an_object",
                        format!("items[{i}] is not a JSON object"),
                    ));
                }
                let head: ItemHead = serde_json::from_str(j)
                    .map_err(|e| bad("invalid_json", format!("items[{i}]: {e}")))?;
                match head.kind.as_deref() {
                    Some("Event") => push_one_line(out, j.as_bytes()),
                    Some(k) => {
                        return Err(bad(
                            "wrong_kind",
                            format!("items[{i}] has kind {k:?}, not Event"),
                        ));
                    }
                    None => {
                        out.extend_from_slice(b"{\"kind\":\"Event\",\"apiVersion\":");
                        out.extend_from_slice(
                            serde_json::to_string(api).unwrap_or_default().as_bytes(),
                        );
                        let rest = j[1..].trim_start();
                        if !rest.starts_with('}') {
                            out.push(b',');
                        }
                        push_one_line(out, rest.as_bytes());
                    }
                }
                out.push(b'\n');
            }
            Ok(items.len())
        }
        Some("Event") => {
            push_one_line(out, text.trim().as_bytes());
            out.push(b'\n');
            Ok(1)
        }
        Some(k) => Err(bad(
            "wrong_kind",
            format!("kind {k:?}: expected EventList or Event"),
        )),
        None => Err(bad(
            "wrong_kind",
            "no kind: expected an audit.k8s.io/v1 EventList or Event".into(),
        )),
    }
}

/// The memory budget is held by other requests: retry.
fn busy() -> Refusal {
    refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        "memory_budget",
        "webhook.memory_budget_bytes is held by other requests; retry later",
    )
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Full<Bytes>> {
    let ok = code.is_success();
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": if ok { "Success" } else { "Failure" },
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    let mut r = Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Kubernetes `Status.reason` for a code.
fn k8s_reason(code: StatusCode) -> &'static str {
    match code.as_u16() {
        200 => "",
        400 => "BadRequest",
        401 => "Unauthorized",
        405 => "MethodNotAllowed",
        408 => "Timeout",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        _ => "InternalError",
    }
}

impl Webhook {
    /// Checks, reads, parses and spools one request.
    async fn accept(&self, req: Request<Incoming>, slot: &Slot) -> Result<usize, Refusal> {
        if req.method() != Method::POST {
            return Err(refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "method",
                format!("{} is not supported: POST an audit EventList", req.method()),
            ));
        }
        if let Some(t) = &self.token {
            let want = t.current().map_err(|e| {
                warn!(error = %e, "webhook: no bearer token to compare with");
                refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "token_unavailable",
                    "the server's bearer token file is unreadable",
                )
            })?;
            let mut all = req.headers().get_all(header::AUTHORIZATION).iter();
            let got = all
                .next()
                .filter(|_| all.next().is_none())
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            if !got.is_some_and(|g| same(g.as_bytes(), want.as_bytes())) {
                return Err(refuse(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "a valid bearer token is required",
                ));
            }
            slot.prove();
        }
        if let Some(ct) = req
            .headers()
            .get_all(header::CONTENT_TYPE)
            .iter()
            .find(|ct| !ct.to_str().is_ok_and(|c| c.contains("json")))
        {
            return Err(refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "media_type",
                format!("Content-Type {ct:?}: only application/json is accepted"),
            ));
        }
        let too_large = || {
            refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "the body exceeds webhook.max_body_bytes ({} bytes); lower the apiserver's --audit-webhook-batch-max-size",
                    self.max_body_bytes
                ),
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body_bytes as u64) {
            return Err(too_large());
        }
        let held = self.budget.account();
        if slot.is_proven() {
            held.prove();
        }
        let body = self
            .read_body(req.into_body(), declared, &held)
            .await
            .map_err(|e| e.unwrap_or_else(too_large))?;
        // The lines are about as large as the body: charged before parsing.
        if !held.try_set(body.capacity() + body.len() + 1024) {
            return Err(busy());
        }
        let _permit = self.processing.acquire().await.map_err(|_| busy())?;
        let spool = self.spool.clone();
        let m = self.metrics.clone();
        let r = tokio::task::spawn_blocking(move || {
            let mut lines = Vec::with_capacity(body.len() + 1024);
            let n = to_lines(&body, &mut lines)?;
            drop(body);
            drop(held);
            if n == 0 {
                return Ok(0);
            }
            let mut s = spool.lock().map_err(|_| {
                refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "spool_error",
                    "internal: spool lock poisoned",
                )
            })?;
            let r = s.append(&lines);
            m.spool_bytes.set(s.used() as i64);
            r.map(|()| n).map_err(|e| match e {
                SpoolError::Full { .. } => refuse(
                    StatusCode::TOO_MANY_REQUESTS,
                    "spool_full",
                    format!("{e}: the outputs are behind; retry later"),
                ),
                SpoolError::Io { .. } => refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "spool_error",
                    format!("{e}; retry later"),
                ),
            })
        })
        .await
        .map_err(|e| {
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "spool_error",
                format!("internal: {e}"),
            )
        })?;
        if r.is_ok() {
            slot.prove();
        }
        r
    }

    /// Reads a body of at most `max_body_bytes`, charged to the budget as it
    /// grows, arriving at `min_transfer_rate` or faster. `Err(None)`: too
    /// large.
    async fn read_body(
        &self,
        mut body: Incoming,
        declared: Option<u64>,
        held: &Held,
    ) -> Result<Vec<u8>, Option<Refusal>> {
        let max = self.max_body_bytes;
        let mut buf: Vec<u8> = Vec::new();
        let first = declared.map_or(64 * 1024, |n| n as usize).min(max);
        if !held.try_set(first) {
            return Err(Some(busy()));
        }
        buf.reserve_exact(first);
        let rate_limit = self.limits.min_transfer_rate;
        let mut rate = MinRate::new(rate_limit, Duration::from_secs(10));
        rate.progress(0, std::time::Instant::now());
        loop {
            let next = body.frame();
            let frame = match rate.deadline() {
                Some(d) => tokio::time::timeout_at(d.into(), next).await.map_err(|_| {
                    Some(refuse(
                        StatusCode::REQUEST_TIMEOUT,
                        "slow_body",
                        format!("the body arrived slower than webhook.min_transfer_rate ({rate_limit} bytes/s over 10 s)"),
                    ))
                })?,
                None => next.await,
            };
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|e| {
                Some(refuse(
                    StatusCode::BAD_REQUEST,
                    "read_error",
                    format!("reading the body: {e}"),
                ))
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let len = buf.len() + data.len();
            if len > max {
                return Err(None);
            }
            if len > buf.capacity() {
                let cap = len.max(2 * buf.capacity()).min(max);
                if !held.try_set(cap) {
                    return Err(Some(busy()));
                }
                buf.reserve_exact(cap - buf.len());
            }
            buf.extend_from_slice(&data);
            rate.progress(data.len(), std::time::Instant::now());
        }
        Ok(buf)
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: String,
        slot: Arc<Slot>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let r = self.accept(req, &slot).await;
        let resp = match r {
            Ok(n) => {
                self.metrics.events.inc_by(n as u64);
                debug!(%peer, events = n, "webhook batch spooled");
                status(StatusCode::OK, "", &format!("{n} events accepted"))
            }
            Err(f) => {
                self.metrics.rejected(f.reason);
                warn!(%peer, code = f.code.as_u16(), reason = f.reason, "webhook request refused: {}", f.message);
                let mut r = status(f.code, k8s_reason(f.code), &f.message);
                if matches!(f.code.as_u16(), 429 | 503) {
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
                }
                if f.code == StatusCode::UNAUTHORIZED {
                    r.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        header::HeaderValue::from_static("Bearer"),
                    );
                }
                if f.code == StatusCode::METHOD_NOT_ALLOWED {
                    r.headers_mut()
                        .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
                }
                r
            }
        };
        self.metrics.request(resp.status().as_u16());
        Ok(resp)
    }
}

/// Binds `webhook.listen` (errors name the setting).
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    listen::bind("webhook.listen", addr).await
}

impl Observer for Webhook {
    fn refused(&self, reason: &'static str) {
        self.metrics.rejected(reason);
    }
    fn allow_log(&self) -> Option<u64> {
        self.warn.lock().ok().and_then(|mut w| w.allow())
    }
}

/// Serves until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<(Arc<ReloadingAcceptor>, bool)>,
    st: Arc<Webhook>,
    shutdown: watch::Receiver<bool>,
) {
    let lim = st.limits;
    let l = Listener {
        name: "webhook source",
        limit_key: "webhook.max_connections",
        listener,
        tls_proves: tls.as_ref().is_some_and(|t| t.1),
        tls: tls.map(|t| t.0),
        max_connections: lim.max_connections,
        max_per_address: lim.max_connections_per_address,
        handshake_timeout: lim.handshake_timeout,
        nodelay: false,
    };
    let obs = st.clone();
    l.serve(obs, shutdown, move |a| {
        let st = st.clone();
        async move {
            let peer = a.peer.to_string();
            let p = peer.clone();
            let slot = Arc::new(a.slot);
            let svc = hyper::service::service_fn(move |req| {
                st.clone().handle(req, p.clone(), slot.clone())
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(lim.handshake_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(a.stream), svc);
            tokio::pin!(conn);
            let mut sd = a.shutdown;
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r { debug!(%peer, error = %e, "webhook connection ended") },
                _ = crate::stopped(&mut sd) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
                }
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(body: &str) -> Result<(usize, String), Refusal> {
        let mut out = Vec::new();
        let n = to_lines(body.as_bytes(), &mut out)?;
        Ok((n, String::from_utf8(out).unwrap()))
    }

    #[test]
    fn list_items_become_log_lines_with_kind_and_api_version() {
        let body = r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},
          "items":[
            {"level":"Metadata","auditID":"a1","verb":"get"},
            {
              "kind": "Event", "apiVersion": "audit.k8s.io/v1",
              "auditID": "a2", "note": "line\nbreak escaped"
            },
            {}
          ]}"#;
        let (n, out) = lines(body).unwrap();
        assert_eq!(n, 3);
        let v: Vec<&str> = out.lines().collect();
        assert_eq!(
            v[0],
            r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"a1","verb":"get"}"#
        );
        let second: serde_json::Value = serde_json::from_str(v[1]).unwrap();
        assert_eq!(second["auditID"], "a2");
        assert_eq!(second["note"], "line\nbreak escaped");
        assert_eq!(v[2], r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1"}"#);
        assert!(out.ends_with('\n'));
        // An empty list is fine and writes nothing.
        assert_eq!(
            lines(r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[]}"#).unwrap(),
            (0, String::new())
        );
    }

    #[test]
    fn a_single_event_is_one_line() {
        let (n, out) = lines(
            "{\n \"kind\":\"Event\",\n \"apiVersion\":\"audit.k8s.io/v1\",\"auditID\":\"x\"}\n",
        )
        .unwrap();
        assert_eq!(n, 1);
        assert_eq!(
            out,
            "{ \"kind\":\"Event\", \"apiVersion\":\"audit.k8s.io/v1\",\"auditID\":\"x\"}\n"
        );
    }

    #[test]
    fn bad_bodies_are_refused_with_a_reason() {
        let cases = [
            ("", "empty"),
            ("not json", "invalid_json"),
            (r#"{"kind":"EventList","items":[1]}"#, "not_an_object"),
            (r#"{"kind":"EventList","items":[{"a":}]}"#, "invalid_json"),
            (
                r#"{"kind":"PodList","apiVersion":"v1","items":[]}"#,
                "wrong_kind",
            ),
            (
                r#"{"kind":"EventList","apiVersion":"v1","items":[]}"#,
                "wrong_kind",
            ),
            (r#"{"items":[]}"#, "wrong_kind"),
            (
                r#"{"kind":"EventList","items":[{"kind":"Pod"}]}"#,
                "wrong_kind",
            ),
            (r#"[1,2]"#, "invalid_json"),
        ];
        for (body, reason) in cases {
            let e = lines(body).unwrap_err();
            assert_eq!(e.code, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(e.reason, reason, "{body}: {}", e.message);
        }
        let e = to_lines(b"{\"kind\":\"Event\",\"x\":\"\xff\"}", &mut Vec::new()).unwrap_err();
        assert_eq!(e.reason, "invalid_utf8");
    }

    #[test]
    fn token_comparison() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }
}
