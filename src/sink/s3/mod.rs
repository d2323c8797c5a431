//! `type = "s3"`: the events as objects of JSON lines (gzip'd by default)
//! in S3-compatible storage.
//!
//! Chunks are appended to one open object until it holds
//! `max_object_bytes` (uncompressed), is `max_object_age` old, or the next
//! chunk comes from another file (an object covers one span of one file,
//! which its key names: [`key`]). The object is then uploaded, with
//! `PutObject` or, above `part_bytes`, a multipart upload; its chunks are
//! reported done only when the store confirmed it (the whole upload, or
//! `CompleteMultipartUpload`), so the checkpoint never passes an object
//! the store does not have. A failed upload is retried, the same bytes
//! under the same key, with backoff, until it succeeds or the output
//! stops; meanwhile no more chunks are taken (the tail waits, as for an
//! unreachable Forward server). Memory: one object (compressed), plus the
//! output's chunk buffers.
//!
//! With `no_overwrite` (default), uploads carry `If-None-Match: *`: a key
//! that exists is never replaced, and counts as stored (`objects_existing`),
//! since the same key holds the same span. After a crash the span after the
//! checkpoint is read again; what ends where an uploaded object ended maps
//! to its key, what ends elsewhere becomes a new object whose events were
//! stored before (at most the objects confirmed after the last checkpoint
//! write: `checkpoint_interval`'s worth).

pub mod key;
pub mod settings;
pub mod store;

use super::{Done, Progress};
use crate::forward::batch::Chunk;
use crate::forward::client::ClientEnd;
use crate::ops::logging::RateLimit;
use crate::ops::metrics::OutputMetrics;
use crate::record::time::EventTime;
use crate::transport::backoff::Backoff;
use bytes::Bytes;
use flate2::write::GzEncoder;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
};
use settings::{S3Compression, S3Section};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Every problem of an `[outputs.s3]` section, each as `key: problem`.
pub fn problems(s: &S3Section) -> Vec<String> {
    let mut errs = Vec::new();
    if s.bucket.is_empty() {
        errs.push("bucket: required".to_string());
    }
    if let Err(e) = key::Template::parse(&s.key, &s.key_vars) {
        errs.push(format!("key: {e}"));
    }
    if s.gzip_level > 9 {
        errs.push(format!("gzip_level: {} is not in 0..=9", s.gzip_level));
    }
    if s.part_bytes < (5 << 20) {
        errs.push(format!(
            "part_bytes: {} is below S3's minimum part size (5 MiB)",
            s.part_bytes
        ));
    }
    if s.max_object_bytes == 0 || s.max_object_age.is_zero() || s.request_timeout.is_zero() {
        errs.push("max_object_bytes, max_object_age, request_timeout: must be > 0".into());
    }
    if let Some(e) = &s.endpoint {
        match e.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
            _ => errs.push(format!(
                "endpoint: {e:?} is not an http(s)://host[:port] URL"
            )),
        }
    }
    if let Some(p) = &s.proxy_url
        && !(p.starts_with("http://") || p.starts_with("https://"))
    {
        errs.push(format!("proxy_url: {p:?} must be an http(s):// URL"));
    }
    errs
}

/// What the sink needs besides the store.
pub struct S3Config {
    pub store: Arc<dyn ObjectStore>,
    pub key: key::Template,
    pub gzip: Option<u32>,
    pub max_object_bytes: usize,
    pub max_object_age: Duration,
    pub part_bytes: usize,
    pub no_overwrite: bool,
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// For the key: the output's label, this host, the stream id.
    pub output: String,
    pub hostname: String,
    pub stream: String,
}

impl S3Config {
    /// From the section (the store built, the key template parsed).
    pub fn new(
        s: &S3Section,
        output: String,
        stream: String,
        (retry_min, retry_max): (Duration, Duration),
    ) -> Result<Self, String> {
        Ok(S3Config {
            store: store::build(s).map_err(|e| e.to_string())?,
            key: key::Template::parse(&s.key, &s.key_vars)?,
            gzip: (s.compression == S3Compression::Gzip).then_some(s.gzip_level),
            max_object_bytes: s.max_object_bytes,
            max_object_age: s.max_object_age,
            part_bytes: s.part_bytes,
            no_overwrite: s.no_overwrite,
            retry_min,
            retry_max,
            output,
            hostname: crate::forward::protocol::handshake::hostname("audit-forwarder"),
            stream,
        })
    }
}

/// The object being filled.
struct Object {
    body: Body,
    /// Uncompressed bytes (the size threshold).
    raw: usize,
    events: u64,
    chunks: Vec<Done>,
    opened: Instant,
    /// The first event's time (the key's time placeholders).
    time: Option<EventTime>,
    span: Option<super::Span>,
}

enum Body {
    Gzip(Box<GzEncoder<Vec<u8>>>),
    Plain(Vec<u8>),
}

impl Object {
    fn new(gzip: Option<u32>) -> Self {
        Object {
            body: match gzip {
                Some(l) => Body::Gzip(Box::new(GzEncoder::new(
                    Vec::new(),
                    flate2::Compression::new(l),
                ))),
                None => Body::Plain(Vec::new()),
            },
            raw: 0,
            events: 0,
            chunks: Vec::new(),
            opened: Instant::now(),
            time: None,
            span: None,
        }
    }

    fn append(&mut self, lines: &[u8]) {
        self.raw += lines.len();
        match &mut self.body {
            // Writing into a Vec cannot fail.
            Body::Gzip(g) => {
                let _ = g.write_all(lines);
            }
            Body::Plain(v) => v.extend_from_slice(lines),
        }
    }

    fn finish(
        self,
    ) -> (
        Bytes,
        Vec<Done>,
        u64,
        Option<EventTime>,
        Option<super::Span>,
    ) {
        let bytes = match self.body {
            Body::Gzip(g) => g.finish().unwrap_or_default(),
            Body::Plain(v) => v,
        };
        (
            Bytes::from(bytes),
            self.chunks,
            self.events,
            self.time,
            self.span,
        )
    }
}

pub struct S3Sink {
    cfg: S3Config,
    m: OutputMetrics,
    rx: mpsc::Receiver<Chunk>,
    progress: Progress,
    shutdown: watch::Receiver<bool>,
    warn: RateLimit,
    backoff: Backoff,
}

impl S3Sink {
    pub fn new(
        cfg: S3Config,
        m: OutputMetrics,
        rx: mpsc::Receiver<Chunk>,
        progress: Progress,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let backoff = Backoff::new(cfg.retry_min, cfg.retry_max);
        S3Sink {
            cfg,
            m,
            rx,
            progress,
            shutdown,
            warn: RateLimit::default(),
            backoff,
        }
    }

    /// Runs until the input ends (everything uploaded: `Drained`) or
    /// shutdown (the open object is uploaded first; the checkpointer's
    /// `shutdown_timeout` bounds how long that may take).
    pub async fn run(mut self) -> ClientEnd {
        // No connection to keep: the store counts as reachable until an
        // upload fails.
        self.m.set_connected(true);
        let mut sd = self.shutdown.clone();
        let mut obj: Option<Object> = None;
        let mut lines = Vec::new();
        loop {
            let due = obj.as_ref().map(|o| o.opened + self.cfg.max_object_age);
            tokio::select! {
                    biased;
                    _ = crate::stopped(&mut sd) => {
                        self.rx.close();
                        if let Some(o) = obj.take() {
                            info!(output = %self.cfg.output, "stopping: uploading the open object");
                            self.upload(o).await;
                        }
                        // Chunks still queued were never taken: read again after restart.
                        while let Ok(c) = self.rx.try_recv() {
                            let (d, _) = self.progress.take(c, &mut lines);
                            self.progress.dropped([d]);
                        }
                        return ClientEnd::Shutdown { unacked: 0 };
                    }
                    _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                        if let Some(o) = obj.take() {
                            self.upload(o).await;
                        }
                    }
                    c = self.rx.recv() => match c {
                        None => {
                            if let Some(o) = obj.take() {
                                self.upload(o).await;
                            }
                            return ClientEnd::Drained;
                        }
                        Some(c) => {
                            lines.clear();
            let (done, span) = self.progress.take(c, &mut lines);
                            // Undecodable (a bug): logged and counted by `take`.
                            let span = span.unwrap_or_default();
                            if done.events() == 0 || span.gap {
                                // Nothing to store: done with what precedes it.
                                match obj.as_mut() {
                                    Some(o) => o.chunks.push(done),
                                    None => self.progress.done([done]),
                                }
                                continue;
                            }
                            // One object, one file: a chunk of another file
                            // closes the open object first.
                            if let Some(o) = obj.as_ref()
                                && o.span.as_ref().is_some_and(|s| s.source != span.source)
                                && let Some(o) = obj.take()
                            {
                                self.upload(o).await;
                            }
                            let o = obj.get_or_insert_with(|| Object::new(self.cfg.gzip));
                            o.append(&lines);
                            o.events += done.events();
                            // The first event's own time: the same span read
                            // again maps to the same key whatever the chunking.
                            if o.time.is_none() {
                                let first = lines.split(|b| *b == b'\n').next().unwrap_or_default();
                                o.time = super::event_time(first).or(done.time());
                            }
                            match o.span.as_mut() {
                                Some(s) => s.end = span.end,
                                None => o.span = Some(span),
                            }
                            o.chunks.push(done);
                            if o.raw >= self.cfg.max_object_bytes
                                && let Some(o) = obj.take()
                            {
                                self.upload(o).await;
                            }
                        }
                    },
                }
        }
    }

    /// Uploads `o` until the store confirms it; then its chunks are done.
    /// On shutdown during retries it gives up: the chunks stay unreported
    /// and are read again after the restart.
    async fn upload(&mut self, o: Object) {
        let (body, chunks, events, time, span) = o.finish();
        if events == 0 {
            self.progress.done(chunks);
            return;
        }
        let span = span.unwrap_or_default();
        let key = self.cfg.key.render(&key::KeyInput {
            time: time.unwrap_or_else(EventTime::now),
            output: &self.cfg.output,
            hostname: &self.cfg.hostname,
            stream: &self.cfg.stream,
            source: &span.source,
            start: span.start,
            end: span.end,
        });
        let path = Path::from(key.as_str());
        self.m.chunks_sent.inc_by(chunks.len() as u64);
        self.m.events_sent.inc_by(events);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let started = Instant::now();
            let r = self.put(&path, body.clone()).await;
            match r {
                Ok(how) => {
                    self.m.set_connected(true);
                    self.backoff.reset();
                    match how {
                        Stored::Written => {
                            self.m.objects_uploaded.inc();
                            self.m.bytes_sent.inc_by(body.len() as u64);
                            debug!(key = %key, bytes = body.len(), events, ms = started.elapsed().as_millis() as u64, "object stored");
                        }
                        Stored::Existing => {
                            self.m.objects_existing.inc();
                            info!(key = %key, events, "object already stored (a retry after a lost confirmation, or the same span read again): kept, not replaced");
                        }
                    }
                    if attempt > 1 {
                        info!(key = %key, attempts = attempt, "object stored after failures");
                    }
                    self.progress.done(chunks);
                    return;
                }
                Err(e) => {
                    let reason = store::reason(&e);
                    self.m.send_error(&reason);
                    self.m.set_connected(false);
                    let wait = self.backoff.next_wait();
                    if let Some(n) = self.warn.allow() {
                        warn!(key = %key, error = %e, reason = %reason, attempt, retry_in_ms = wait.as_millis() as u64,
                            suppressed = n, "object upload failed; will retry (the checkpoint stays before it)");
                    }
                    let mut sd = self.shutdown.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = crate::stopped(&mut sd) => {
                            warn!(key = %key, events, "stopping while the store fails: the object is not stored; its events are read again after the restart");
                            self.progress.dropped(chunks);
                            return;
                        }
                    }
                }
            }
        }
    }

    async fn put(&self, path: &Path, body: Bytes) -> Result<Stored, object_store::Error> {
        let mut attrs = Attributes::new();
        attrs.insert(Attribute::ContentType, "application/x-ndjson".into());
        if self.cfg.gzip.is_some() {
            attrs.insert(Attribute::ContentEncoding, "gzip".into());
        }
        let store = &self.cfg.store;
        if body.len() <= self.cfg.part_bytes {
            let opts = PutOptions {
                mode: if self.cfg.no_overwrite {
                    PutMode::Create
                } else {
                    PutMode::Overwrite
                },
                attributes: attrs,
                ..Default::default()
            };
            return match store.put_opts(path, PutPayload::from(body), opts).await {
                Ok(_) => Ok(Stored::Written),
                // object_store reports a 412 to If-None-Match, but also any
                // 409 Conflict, as AlreadyExists: only an object that is
                // there counts as stored.
                Err(e @ object_store::Error::AlreadyExists { .. }) => {
                    match store.head(path).await {
                        Ok(_) if self.cfg.no_overwrite => Ok(Stored::Existing),
                        Ok(_) | Err(_) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
        }
        // Multipart: parts of `part_bytes`, completed only when all are in.
        if self.cfg.no_overwrite {
            match store.head(path).await {
                Ok(_) => return Ok(Stored::Existing),
                Err(object_store::Error::NotFound { .. }) => {}
                // Unknown (403 to HEAD, 5xx): retry rather than risk
                // replacing a stored object.
                Err(e) => return Err(e),
            }
        }
        let opts = object_store::PutMultipartOptions {
            attributes: attrs,
            ..Default::default()
        };
        let mut up = store.put_multipart_opts(path, opts).await?;
        let mut off = 0;
        while off < body.len() {
            let end = (off + self.cfg.part_bytes).min(body.len());
            if let Err(e) = up.put_part(PutPayload::from(body.slice(off..end))).await {
                let _ = up.abort().await;
                return Err(e);
            }
            off = end;
        }
        match up.complete().await {
            Ok(_) => Ok(Stored::Written),
            Err(e) => {
                let _ = up.abort().await;
                Err(e)
            }
        }
    }
}

enum Stored {
    Written,
    Existing,
}
