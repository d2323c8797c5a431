//! Tunnels through an HTTP CONNECT proxy (RFC 9110 §9.3.6): konnectivity
//! over a Unix socket, an mTLS proxy (konnectivity-server, Gardener's VPN
//! endpoint), or a plain HTTP proxy (tinyproxy, squid).
//!
//! The tunnel is set up in-process; TLS to the receiver and the Forward
//! handshake run inside it. Quirks handled (all seen on real proxies):
//! - any `2xx` status is success, whatever the version and reason
//!   (`HTTP/1.1 200 Connection Established`, `HTTP/1.0 200 Connection
//!   established` + headers, `HTTP/1.1 200 OK` + `Date`);
//! - bytes after the response head in the same read belong to the tunnel;
//! - a non-2xx answer becomes [`ProxyError::Refused`] with the status and the
//!   first line of the body;
//! - older konnectivity may answer `HTTP/0.0 503 …` *inside* an established
//!   tunnel: a tunnel whose first bytes are `HTTP/` is a proxy error
//!   ([`ProxyError::InTunnel`], surfaced through the first read);
//! - a client certificate rejected under TLS 1.3 surfaces at the first read
//!   as an alert: reported as [`ProxyError::Certificate`].
//!
//! These proxies do not support half-close, so nothing here (or in the
//! Forward client) ever shuts down the write side of a tunnel.

use super::tls::{ClientTls, TlsError};
use super::{Io, Stream};
use base64::Engine;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Largest response head accepted from a proxy.
const MAX_HEAD: usize = 16 << 10;
/// How much of an error body is read to explain a refusal.
const MAX_BODY: usize = 8 << 10;

/// How the proxy itself is reached.
#[derive(Debug, Clone)]
pub enum Via {
    /// konnectivity-server's `--uds-name` socket (http-connect mode).
    Uds(PathBuf),
    /// Plain TCP.
    Http { host: String, port: u16 },
    /// TLS (usually mutual) to the proxy.
    Https {
        host: String,
        port: u16,
        tls: ClientTls,
    },
}

/// One proxy as configured on an output.
#[derive(Debug, Clone)]
pub struct Proxy {
    pub via: Via,
    /// `Host` header of the CONNECT request; default `<host>:<port>` of the
    /// target (kube-apiserver sends `127.0.0.1`).
    pub host_header: Option<String>,
    /// Extra request headers (some proxies route by header).
    pub headers: Vec<(String, String)>,
    /// `Proxy-Authorization: Basic` credentials.
    pub basic_auth: Option<(String, String)>,
}

/// Why a tunnel could not be used. Every message names the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("proxy {proxy}: cannot connect: {source}")]
    Connect { proxy: String, source: io::Error },
    #[error("proxy {proxy}: timed out after {secs:.1}s ({stage})")]
    Timeout {
        proxy: String,
        secs: f64,
        stage: &'static str,
    },
    #[error("proxy {proxy}: TLS: {source}")]
    Tls { proxy: String, source: TlsError },
    #[error(
        "proxy {proxy}: the proxy rejected this client's certificate ({alert}); check proxy.cert_file/proxy.key_file and the proxy's client CA"
    )]
    Certificate { proxy: String, alert: String },
    #[error("proxy {proxy} refused CONNECT {target}: {status} {reason}{detail}")]
    Refused {
        proxy: String,
        target: String,
        status: u16,
        reason: String,
        /// `: <first line of the body>` or empty.
        detail: String,
    },
    #[error("proxy {proxy}: error inside the tunnel to {target}: {line:?}")]
    InTunnel {
        proxy: String,
        target: String,
        line: String,
    },
    #[error("proxy {proxy}: closed the connection before answering CONNECT{hint}")]
    Closed { proxy: String, hint: &'static str },
    #[error("proxy {proxy}: invalid answer to CONNECT: {detail}")]
    Invalid { proxy: String, detail: String },
    #[error("proxy {proxy}: {source}")]
    Io { proxy: String, source: io::Error },
}

impl ProxyError {
    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::Connect { .. } => "proxy_connect",
            ProxyError::Timeout { .. } => "proxy_timeout",
            ProxyError::Tls { .. } | ProxyError::Certificate { .. } => "proxy_tls",
            ProxyError::Refused { .. } | ProxyError::InTunnel { .. } => "proxy_refused",
            ProxyError::Closed { .. } | ProxyError::Invalid { .. } | ProxyError::Io { .. } => {
                "proxy_protocol"
            }
        }
    }

    /// The proxy error carried by an I/O error from a tunnel, if any (an
    /// in-tunnel `HTTP/` answer surfaces through a read, possibly inside TLS).
    pub fn from_io(e: &io::Error) -> Option<&ProxyError> {
        e.get_ref().and_then(|i| i.downcast_ref::<ProxyError>())
    }
}

/// A parsed CONNECT response head.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    /// As sent, e.g. `HTTP/1.0`, `HTTP/0.0`.
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    /// Bytes of the head, including the blank line.
    pub len: usize,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a response head (status line per RFC 9112 §4, any `HTTP/x.y`
/// version; header fields with httparse). `Ok(None)`: incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let Some(nl) = memchr::memchr(b'\n', buf) else {
        if buf.len() >= MAX_HEAD {
            return Err("status line too long".into());
        }
        return Ok(None);
    };
    let line = String::from_utf8_lossy(&buf[..nl]);
    let line = line.trim_end_matches('\r');
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/") {
        return Err(format!("not an HTTP response: {:?}", clip(line, 80)));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..1000).contains(s))
        .ok_or_else(|| format!("no status code in {:?}", clip(line, 80)))?;
    let reason = parts.next().unwrap_or_default().trim().to_string();
    let mut hdrs = [httparse::EMPTY_HEADER; 64];
    match httparse::parse_headers(&buf[nl + 1..], &mut hdrs) {
        Ok(httparse::Status::Complete((n, hs))) => Ok(Some(Head {
            version: version.to_string(),
            status,
            reason,
            headers: hs
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).trim().to_string(),
                    )
                })
                .collect(),
            len: nl + 1 + n,
        })),
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => Ok(None),
        Ok(httparse::Status::Partial) => Err(format!("response head over {MAX_HEAD} bytes")),
        Err(e) => Err(format!("invalid header fields: {e}")),
    }
}

fn clip(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// The first meaningful line of an error body: the `<title>` of an HTML
/// page, else the first non-empty line; at most 200 characters.
pub fn body_line(head: &Head, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let html = head
        .header("content-type")
        .is_some_and(|c| c.contains("html"))
        || text.trim_start().starts_with('<');
    let line = if html {
        let lower = text.to_ascii_lowercase();
        match (lower.find("<title>"), lower.find("</title>")) {
            (Some(a), Some(b)) if b > a + 7 => text[a + 7..b].trim().to_string(),
            _ => String::new(),
        }
    } else {
        text.lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or_default()
            .to_string()
    };
    clip(&line, 200)
}

impl Proxy {
    /// How the proxy is named in logs and errors.
    pub fn name(&self) -> String {
        match &self.via {
            Via::Uds(p) => format!("unix:{}", p.display()),
            Via::Http { host, port } => format!("http://{host}:{port}"),
            Via::Https { host, port, .. } => format!("https://{host}:{port}"),
        }
    }

    /// The CONNECT request for `host:port`. The host goes as given (a
    /// Service name or ClusterIP is resolved on the far side).
    pub fn request(&self, host: &str, port: u16) -> Vec<u8> {
        let authority = authority(host, port);
        let mut r = format!(
            "CONNECT {authority} HTTP/1.1\r\nHost: {}\r\n",
            self.host_header.as_deref().unwrap_or(&authority)
        );
        if let Some((u, p)) = &self.basic_auth {
            let cred = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            r.push_str(&format!("Proxy-Authorization: Basic {cred}\r\n"));
        }
        for (k, v) in &self.headers {
            r.push_str(&format!("{k}: {v}\r\n"));
        }
        r.push_str("\r\n");
        r.into_bytes()
    }

    /// Opens a tunnel to `host:port`. Bounded by `timeout` per stage
    /// (reaching the proxy, TLS, the CONNECT answer).
    pub async fn connect(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<Stream, ProxyError> {
        let proxy = self.name();
        let timed_out = |stage| ProxyError::Timeout {
            proxy: proxy.clone(),
            secs: timeout.as_secs_f64(),
            stage,
        };
        let mut s: Stream = match &self.via {
            Via::Uds(p) => {
                let s = tokio::time::timeout(timeout, tokio::net::UnixStream::connect(p))
                    .await
                    .map_err(|_| timed_out("connecting"))?;
                Box::new(s.map_err(|source| ProxyError::Connect {
                    proxy: proxy.clone(),
                    source,
                })?)
            }
            Via::Http { host: h, port: p }
            | Via::Https {
                host: h, port: p, ..
            } => {
                let s = super::tcp::connect(h, *p, timeout)
                    .await
                    .map_err(|e| match e {
                        super::ConnectError::Timeout { .. } => timed_out("connecting"),
                        super::ConnectError::Io { source, .. } => ProxyError::Connect {
                            proxy: proxy.clone(),
                            source,
                        },
                    })?;
                let s: Stream = Box::new(s);
                match &self.via {
                    Via::Https { tls, .. } => {
                        tls.connect(h, s, timeout)
                            .await
                            .map_err(|source| ProxyError::Tls {
                                proxy: proxy.clone(),
                                source,
                            })?
                    }
                    _ => s,
                }
            }
        };
        let work = async {
            s.write_all(&self.request(host, port)).await?;
            s.flush().await?;
            let mut buf = Vec::with_capacity(1024);
            let head = loop {
                if let Some(h) = parse_head(&buf).map_err(|detail| ProxyError::Invalid {
                    proxy: proxy.clone(),
                    detail,
                })? {
                    break h;
                }
                if s.read_buf(&mut buf).await? == 0 {
                    return Err(if buf.is_empty() {
                        ProxyError::Closed {
                            proxy: proxy.clone(),
                            hint: self.closed_hint(),
                        }
                    } else {
                        ProxyError::Invalid {
                            proxy: proxy.clone(),
                            detail: format!(
                                "connection closed in the response head: {:?}",
                                clip(&String::from_utf8_lossy(&buf), 80)
                            ),
                        }
                    });
                }
            };
            Ok((head, buf))
        };
        let (head, mut buf) = match tokio::time::timeout(timeout, work).await {
            Err(_) => return Err(timed_out("waiting for the answer to CONNECT")),
            Ok(Err(e)) => return Err(self.classify(e)),
            Ok(Ok(v)) => v,
        };
        if (200..300).contains(&head.status) {
            buf.drain(..head.len);
            return Ok(Box::new(Tunnel::new(s, buf, proxy, authority(host, port))));
        }
        // Read what the body says, briefly and bounded.
        let want = head
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(MAX_BODY)
            .min(MAX_BODY);
        let body_read = async {
            while buf.len() - head.len < want {
                match s.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), body_read).await;
        let body = &buf[head.len..buf.len().min(head.len + MAX_BODY)];
        let mut detail = body_line(&head, body);
        // squid explains itself in a header (`X-Squid-Error: ERR_CONNECT_FAIL 111`).
        for (k, v) in &head.headers {
            if k.to_ascii_lowercase().ends_with("-error") {
                detail = format!("{detail} ({k}: {v})");
            }
        }
        let detail = detail.trim();
        let detail = if detail.is_empty() || detail == format!("{} {}", head.status, head.reason) {
            String::new()
        } else {
            format!(": {detail}")
        };
        Err(ProxyError::Refused {
            proxy,
            detail,
            target: authority(host, port),
            status: head.status,
            reason: head.reason,
        })
    }

    fn closed_hint(&self) -> &'static str {
        match &self.via {
            Via::Https { tls, .. } if tls.cert_file.is_some() => {
                " (with mutual TLS this usually means the proxy rejected the client certificate)"
            }
            Via::Https { .. } => {
                " (the proxy may require a client certificate: set proxy.cert_file and proxy.key_file)"
            }
            _ => "",
        }
    }

    /// Turns an I/O error while talking to the proxy into its meaning.
    fn classify(&self, e: ProxyError) -> ProxyError {
        let ProxyError::Io { source, .. } = e else {
            return e;
        };
        let proxy = self.name();
        match super::tls::alert(&source) {
            Some(alert) => ProxyError::Certificate { proxy, alert },
            None => ProxyError::Io { proxy, source },
        }
    }
}

impl From<io::Error> for ProxyError {
    fn from(source: io::Error) -> Self {
        ProxyError::Io {
            proxy: String::new(),
            source,
        }
    }
}

/// `host:port`, with brackets for an IPv6 literal.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// An established tunnel: first the bytes that came with the response head,
/// then the stream; the first bytes are checked for an in-tunnel `HTTP/`
/// answer.
pub struct Tunnel<S> {
    inner: S,
    buf: Vec<u8>,
    pos: usize,
    checking: bool,
    proxy: String,
    target: String,
}

impl<S> Tunnel<S> {
    pub fn new(inner: S, buf: Vec<u8>, proxy: String, target: String) -> Self {
        Tunnel {
            inner,
            buf,
            pos: 0,
            checking: true,
            proxy,
            target,
        }
    }

    /// While checking: `Some(true)` the tunnel starts with `HTTP/`,
    /// `Some(false)` it does not, `None` too few bytes to tell.
    fn verdict(&self) -> Option<bool> {
        const P: &[u8] = b"HTTP/";
        let b = &self.buf[..self.buf.len().min(P.len())];
        if !P.starts_with(b) {
            Some(false)
        } else if b.len() == P.len() {
            Some(true)
        } else {
            None
        }
    }

    fn in_tunnel_error(&self) -> io::Error {
        let end = memchr::memchr(b'\n', &self.buf).unwrap_or(self.buf.len());
        let line = String::from_utf8_lossy(&self.buf[..end])
            .trim_end()
            .to_string();
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            ProxyError::InTunnel {
                proxy: self.proxy.clone(),
                target: self.target.clone(),
                line: clip(&line, 200),
            },
        )
    }
}

impl<S: Io> AsyncRead for Tunnel<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        while me.checking {
            match me.verdict() {
                Some(false) => me.checking = false,
                // Wait for the whole status line (bounded) to report it.
                Some(true) if memchr::memchr(b'\n', &me.buf).is_some() || me.buf.len() >= 512 => {
                    return Poll::Ready(Err(me.in_tunnel_error()));
                }
                _ => match read_more(me, cx)? {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(true) => {}
                    Poll::Ready(false) => {
                        if me.verdict() == Some(true) {
                            return Poll::Ready(Err(me.in_tunnel_error()));
                        }
                        // EOF: pass on what there is.
                        me.checking = false;
                    }
                },
            }
        }
        if me.pos < me.buf.len() {
            let n = (me.buf.len() - me.pos).min(out.remaining());
            out.put_slice(&me.buf[me.pos..me.pos + n]);
            me.pos += n;
            if me.pos == me.buf.len() {
                me.buf = Vec::new();
                me.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut me.inner).poll_read(cx, out)
    }
}

/// Reads more into the check buffer: `Ready(false)` at EOF.
fn read_more<S: Io>(t: &mut Tunnel<S>, cx: &mut Context<'_>) -> io::Result<Poll<bool>> {
    let mut tmp = [0u8; 512];
    let mut rb = ReadBuf::new(&mut tmp);
    match Pin::new(&mut t.inner).poll_read(cx, &mut rb) {
        Poll::Pending => Ok(Poll::Pending),
        Poll::Ready(Err(e)) => Err(e),
        Poll::Ready(Ok(())) => {
            t.buf.extend_from_slice(rb.filled());
            Ok(Poll::Ready(!rb.filled().is_empty()))
        }
    }
}

impl<S: Io> AsyncWrite for Tunnel<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn plain(port: u16) -> Proxy {
        Proxy {
            via: Via::Http {
                host: "127.0.0.1".into(),
                port,
            },
            host_header: None,
            headers: vec![],
            basic_auth: None,
        }
    }

    /// A one-connection proxy that checks the request and writes `answer`
    /// in one packet, then echoes what it reads.
    async fn canned(answer: &'static [u8]) -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = Vec::new();
            while !req.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                if s.read(&mut b).await.unwrap() == 0 {
                    break;
                }
                req.push(b[0]);
            }
            s.write_all(answer).await.unwrap();
            let mut b = [0u8; 64];
            if let Ok(n) = s.read(&mut b).await {
                let _ = s.write_all(&b[..n]).await;
            }
            req
        });
        (port, h)
    }

    /// Opens a tunnel through a canned proxy and reads once from it.
    async fn open(answer: &'static [u8]) -> (Result<Stream, io::Error>, Vec<u8>) {
        let (port, _h) = canned(answer).await;
        let mut s = plain(port)
            .connect("receiver.ns.svc", 24224, Duration::from_secs(5))
            .await
            .unwrap();
        let mut got = vec![0u8; 64];
        match s.read(&mut got).await {
            Ok(n) => {
                got.truncate(n);
                (Ok(s), got)
            }
            Err(e) => (Err(e), vec![]),
        }
    }

    #[tokio::test]
    async fn success_lines_of_real_proxies() {
        for answer in [
            &b"HTTP/1.1 200 Connection Established\r\n\r\n"[..],
            b"HTTP/1.0 200 Connection established\r\nProxy-agent: tinyproxy/1.11.1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nDate: Mon, 23 Nov 2026 21:00:00 GMT\r\n\r\n",
            b"HTTP/1.1 200 Connection established\n\n",
        ] {
            let head = parse_head(answer).unwrap().unwrap();
            assert_eq!(head.status, 200);
            assert_eq!(head.len, answer.len());
        }
        let h = parse_head(b"HTTP/1.0 200 Connection established\r\nProxy-agent: t\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.version, "HTTP/1.0");
        assert_eq!(h.headers, vec![("Proxy-agent".into(), "t".into())]);
        assert_eq!(parse_head(b"HTTP/1.1 200 Connection Est").unwrap(), None);
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nDate: x\r\n").unwrap(), None);
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 abc\r\n\r\n").is_err());
        assert!(parse_head(&vec![b'a'; MAX_HEAD]).is_err());
    }

    #[tokio::test]
    async fn tunnel_bytes_in_the_same_packet_are_kept() {
        let (port, h) = canned(b"HTTP/1.1 200 Connection Established\r\n\r\n\xc3HELO").await;
        let mut s = plain(port)
            .connect("10.0.0.1", 24224, Duration::from_secs(5))
            .await
            .unwrap();
        let mut got = [0u8; 5];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"\xc3HELO");
        s.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        s.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"ping");
        let req = String::from_utf8(h.await.unwrap()).unwrap();
        assert_eq!(
            req,
            "CONNECT 10.0.0.1:24224 HTTP/1.1\r\nHost: 10.0.0.1:24224\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn refusals_name_status_and_body() {
        let cases: [(&'static [u8], u16, &str); 5] = [
            (
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 33\r\n\r\ncurrently no tunnels available\r\n\r\n",
                500,
                "currently no tunnels available",
            ),
            (
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\n\r\nfailed to dial 10.0.0.1:24224: connection refused\nmore\n",
                502,
                "failed to dial 10.0.0.1:24224: connection refused",
            ),
            (b"HTTP/1.1 503 Service Unavailable\r\n\r\n", 503, ""),
            (
                b"HTTP/1.1 504 Gateway Timeout\r\nContent-Length: 16\r\n\r\ndial timeout 5s\n",
                504,
                "dial timeout 5s",
            ),
            (
                b"HTTP/1.1 500 Unable to connect\r\nServer: tinyproxy/1.11.1\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n<html><head><title>500 Unable to connect</title></head></html>",
                500,
                "500 Unable to connect",
            ),
        ];
        for (answer, status, body) in cases {
            let (port, _h) = canned(answer).await;
            let e = plain(port)
                .connect("10.0.0.1", 24224, Duration::from_secs(5))
                .await
                .err()
                .unwrap();
            let msg = e.to_string();
            match &e {
                ProxyError::Refused { status: s, .. } => assert_eq!(*s, status),
                other => panic!("{other:?}"),
            }
            assert!(msg.contains(&format!("http://127.0.0.1:{port}")), "{msg}");
            assert!(msg.contains("10.0.0.1:24224"), "{msg}");
            assert!(msg.contains(&status.to_string()), "{msg}");
            assert!(msg.contains(body), "{msg}");
            assert_eq!(e.reason(), "proxy_refused");
        }
        // squid explains itself in a header.
        let (port, _h) = canned(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/html\r\nContent-Length: 52\r\nX-Squid-Error: ERR_CONNECT_FAIL 111\r\n\r\n<html><title>ERROR: could not be retrieved</title>").await;
        let e = plain(port)
            .connect("10.0.0.1", 24224, Duration::from_secs(5))
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("ERR_CONNECT_FAIL 111") && e.contains("could not be retrieved"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn old_konnectivity_http_0_0_before_and_inside_the_tunnel() {
        // As the answer itself.
        let (port, _h) = canned(b"HTTP/0.0 503 Service Unavailable\r\n\r\nno agent\n").await;
        let e = plain(port)
            .connect("10.0.0.1", 24224, Duration::from_secs(5))
            .await
            .err()
            .unwrap();
        assert!(matches!(e, ProxyError::Refused { status: 503, .. }), "{e}");
        // Inside an established tunnel, in the same packet as the 200.
        let (r, _) =
            open(b"HTTP/1.1 200 OK\r\nDate: x\r\n\r\nHTTP/0.0 503 Service Unavailable\r\n").await;
        let source = r.err().unwrap();
        let inner = ProxyError::from_io(&source).expect("proxy error inside the io error");
        assert!(matches!(inner, ProxyError::InTunnel { .. }));
        assert!(
            inner
                .to_string()
                .contains("HTTP/0.0 503 Service Unavailable"),
            "{inner}"
        );
        // Data that merely starts like HTTP but is not: "HTT" then other bytes.
        let (r, got) = open(b"HTTP/1.1 200 OK\r\n\r\nHTX").await;
        assert!(r.is_ok());
        assert_eq!(got, b"HTX");
    }

    #[tokio::test]
    async fn in_tunnel_error_split_across_reads() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut b = [0u8; 1024];
            let _ = s.read(&mut b).await;
            s.write_all(b"HTTP/1.1 200 OK\r\n\r\nHT").await.unwrap();
            let _ = rx.await;
            s.write_all(b"TP/0.0 503 Service Unavailable\r\n")
                .await
                .unwrap();
            let _ = s.read(&mut b).await;
        });
        let mut s = plain(port)
            .connect("10.0.0.1", 24224, Duration::from_secs(5))
            .await
            .unwrap();
        let mut got = [0u8; 8];
        let read = s.read(&mut got);
        tokio::pin!(read);
        // The first two bytes alone do not decide; the read waits for more.
        assert!(futures_poll_once(&mut read).await.is_none());
        tx.send(()).unwrap();
        let e = read.await.unwrap_err();
        assert!(ProxyError::from_io(&e).is_some(), "{e}");
    }

    /// Polls a future once.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        std::future::poll_fn(|cx| match Pin::new(&mut *f).poll(cx) {
            Poll::Ready(v) => Poll::Ready(Some(v)),
            Poll::Pending => Poll::Ready(None),
        })
        .await
    }

    #[tokio::test]
    async fn closed_and_garbage_answers() {
        // Accepts, reads the request, closes without an answer.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut b = [0u8; 1024];
            let _ = s.read(&mut b).await;
        });
        let e = plain(port)
            .connect("10.0.0.1", 24224, Duration::from_secs(5))
            .await
            .err()
            .unwrap();
        assert!(matches!(e, ProxyError::Closed { .. }), "{e}");
        let (port, _h) = canned(b"\x16\x03\x01\x00garbage\r\n\r\n").await;
        let e = plain(port)
            .connect("10.0.0.1", 24224, Duration::from_secs(5))
            .await
            .err()
            .unwrap();
        assert!(matches!(e, ProxyError::Invalid { .. }), "{e}");
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = plain(port)
            .connect("10.0.0.1", 24224, Duration::from_secs(5))
            .await
            .err()
            .unwrap();
        assert_eq!(e.reason(), "proxy_connect");
        assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
    }

    #[test]
    fn request_with_host_header_auth_and_extra_headers() {
        let p = Proxy {
            via: Via::Uds("/run/konnectivity/konnectivity-server.socket".into()),
            host_header: Some("127.0.0.1".into()),
            headers: vec![("X-Route".into(), "shoot--a".into())],
            basic_auth: Some(("u".into(), "p w".into())),
        };
        assert_eq!(
            String::from_utf8(p.request("fd00::1", 24224)).unwrap(),
            "CONNECT [fd00::1]:24224 HTTP/1.1\r\nHost: 127.0.0.1\r\nProxy-Authorization: Basic dTpwIHc=\r\nX-Route: shoot--a\r\n\r\n"
        );
        assert_eq!(
            p.name(),
            "unix:/run/konnectivity/konnectivity-server.socket"
        );
    }
}
