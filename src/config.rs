//! Configuration: one TOML file, overridden by `AUDIT_*` environment
//! variables, overridden by command-line flags.
//!
//! Every setting has a key path (`tail.path`, `receive.listen`, ...). The
//! environment variable of a key is `AUDIT_` plus the path in upper case with
//! `__` between sections (`AUDIT_TAIL__MAX_LINE_BYTES`); any key can also be
//! set with `--set tail.max_line_bytes=1048576`. Settings of the first (or
//! only) output can be given under the key `output` (`AUDIT_OUTPUT__HOST`,
//! `--set output.port=24225`); they are merged into `outputs[0]`.

use crate::ops::logging::LogFormat;
use crate::source::tail::StartAt;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Value};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Log filter, e.g. `info` or `audit_forwarder=debug`.
    pub log_level: String,
    pub log_format: LogFormat,
    /// Where checkpoints are kept (one file per output).
    pub state_dir: PathBuf,
    /// On SIGTERM, how long to wait for outstanding acks.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// `host:port` of the /metrics, /healthz and /readyz endpoint; off unless set.
    pub http_listen: Option<String>,
    /// /readyz stays ready this long after the last destination was lost.
    #[serde(with = "humantime_serde")]
    pub readiness_grace: Duration,
    /// Files holding audit content created 0640 and directories 0750
    /// (else 0600 and 0700).
    pub group_readable: bool,
    pub tail: TailSection,
    pub outputs: Vec<OutputSection>,
    /// Shorthand for settings of `outputs[0]` (env and flags use it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputSection>,
    pub receive: ReceiveSection,
    /// The audit webhook source (off unless `webhook.listen` is set).
    pub webhook: WebhookSection,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            log_level: "info".into(),
            log_format: LogFormat::Text,
            state_dir: "/var/lib/audit-forwarder".into(),
            shutdown_timeout: Duration::from_secs(10),
            http_listen: None,
            readiness_grace: Duration::from_secs(30),
            group_readable: false,
            tail: TailSection::default(),
            outputs: Vec::new(),
            output: None,
            receive: ReceiveSection::default(),
            webhook: WebhookSection::default(),
        }
    }
}

/// One source of audit events feeding every output: the audit log file, or
/// the webhook spool (which the same tail reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSpec {
    /// `tail` or `webhook`.
    pub kind: &'static str,
    pub path: PathBuf,
    pub start_at: StartAt,
}

impl SourceSpec {
    /// The name of an output's pipeline for this source: checkpoints
    /// (`checkpoint-<label>.json`) and metrics (`output="<label>"`). The file
    /// source keeps the output's name; the webhook spool adds `@webhook`.
    pub fn label(&self, output: &str) -> String {
        match self.kind {
            "tail" => output.to_string(),
            k => format!("{output}@{k}"),
        }
    }
}

impl Config {
    /// The enabled sources: the audit log (unless `tail.enabled = false`)
    /// and the webhook spool (when `webhook.listen` is set).
    pub fn sources(&self) -> Vec<SourceSpec> {
        let mut v = Vec::new();
        if self.tail.enabled {
            v.push(SourceSpec {
                kind: "tail",
                path: self.tail.path.clone(),
                start_at: self.tail.start_at,
            });
        }
        if self.webhook.listen.is_some() {
            v.push(SourceSpec {
                kind: "webhook",
                path: self.spool_dir().join(crate::source::spool::LIVE),
                // Everything in the spool was accepted and must be sent.
                start_at: StartAt::Oldest,
            });
        }
        v
    }

    /// Where the webhook source keeps accepted batches.
    pub fn spool_dir(&self) -> PathBuf {
        self.webhook
            .spool_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("spool"))
    }

    /// Every pipeline's label (output × source), e.g. for probes.
    pub fn pipeline_labels(&self) -> Vec<String> {
        let sources = self.sources();
        self.outputs
            .iter()
            .flat_map(|o| sources.iter().map(|s| s.label(&o.name)))
            .collect()
    }
}

/// `[webhook]`: accept kube-apiserver's audit webhook backend
/// (`--audit-webhook-config-file`): `EventList` (or single `Event`) POSTs,
/// spooled to disk before the answer, then forwarded like the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSection {
    /// `host:port` to listen on; unset = the webhook source is off.
    pub listen: Option<String>,
    /// Server certificate and key (HTTPS). Both unset requires
    /// `allow_plaintext = true`.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Require client certificates signed by this CA (the apiserver's
    /// `client-certificate` in the webhook kubeconfig).
    pub tls_client_ca_file: Option<PathBuf>,
    /// Serve plain HTTP (loopback, or behind a TLS-terminating sidecar).
    pub allow_plaintext: bool,
    /// Require `Authorization: Bearer <token>`, the token read from this
    /// file (re-read when it changes).
    pub bearer_token_file: Option<PathBuf>,
    /// Larger bodies get 413 (the apiserver's batches are a few MB).
    pub max_body_bytes: usize,
    /// Request bodies held at once, across connections; over it a request
    /// gets 503 with Retry-After (the apiserver retries it).
    pub memory_budget_bytes: usize,
    /// Open connections; when full, the oldest one that has not completed a
    /// request yet is closed to admit a new one.
    pub max_connections: usize,
    /// Open connections from one source address.
    pub max_connections_per_address: usize,
    /// Requests parsed and spooled at once (the others wait, holding no
    /// permit while their bodies arrive).
    pub max_concurrent_requests: usize,
    /// TLS handshake and request headers must arrive within this time.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A body in progress must arrive at this many bytes per second,
    /// measured over 10 s windows (slowloris); 0 turns it off.
    pub min_transfer_rate: u64,
    /// Default: `<state_dir>/spool`.
    pub spool_dir: Option<PathBuf>,
    /// Accepted but not yet acknowledged by every output; above it new
    /// batches get 429 (the apiserver retries them with backoff).
    pub spool_max_bytes: u64,
    /// Spool files are rotated at this size; a rotated file is deleted once
    /// every output acknowledged all of it.
    pub spool_file_bytes: u64,
    /// Fsync every batch before answering 200 (off only for benchmarks).
    pub fsync: bool,
}

impl Default for WebhookSection {
    fn default() -> Self {
        WebhookSection {
            listen: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            allow_plaintext: false,
            bearer_token_file: None,
            max_body_bytes: 32 << 20,
            memory_budget_bytes: 256 << 20,
            max_connections: 1024,
            max_connections_per_address: 256,
            max_concurrent_requests: 16,
            handshake_timeout: Duration::from_secs(10),
            min_transfer_rate: 1024,
            spool_dir: None,
            spool_max_bytes: 1 << 30,
            spool_file_bytes: 64 << 20,
            fsync: true,
        }
    }
}

impl WebhookSection {
    pub fn server_tls(&self) -> Option<crate::transport::tls::ServerTls> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(c), Some(k)) => Some(crate::transport::tls::ServerTls {
                cert_file: c.clone(),
                key_file: k.clone(),
                client_ca_file: self.tls_client_ca_file.clone(),
            }),
            _ => None,
        }
    }
}

/// What to do with a line that is not a valid JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnInvalid {
    /// Send `{"log": <line>, "error": <reason>}` instead.
    ForwardRaw,
    /// Count it and move on.
    Drop,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TailSection {
    /// Follow the audit log (off: only the webhook source feeds the outputs).
    pub enabled: bool,
    /// The live audit log (`--audit-log-path` of kube-apiserver).
    pub path: PathBuf,
    pub max_line_bytes: usize,
    pub on_invalid: OnInvalid,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    pub read_buffer_bytes: usize,
    /// First start without a checkpoint: `oldest` rotated sibling (every
    /// file on disk), `beginning` or `end` of the live file.
    pub start_at: StartAt,
    /// Bound on the bytes of deleted files held open until read; past it
    /// the oldest is released and reported as a DATA GAP.
    pub max_held_bytes: u64,
}

impl Default for TailSection {
    fn default() -> Self {
        TailSection {
            enabled: true,
            path: "/var/log/audit/audit.log".into(),
            max_line_bytes: 16 << 20,
            on_invalid: OnInvalid::ForwardRaw,
            poll_interval: Duration::from_millis(250),
            read_buffer_bytes: 256 << 10,
            start_at: StartAt::Oldest,
            max_held_bytes: 2 << 30,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputSection {
    /// Names the output in metrics, logs and its checkpoint file.
    pub name: String,
    /// Where events go: a Forward server, or JSON lines on stdout or a file.
    #[serde(rename = "type")]
    pub kind: OutputKind,
    /// With `type = "file"`: the file to append JSON lines to.
    pub path: Option<PathBuf>,
    /// Audit Policy of this output: a preset (`metadata`, `minimal`,
    /// `recommended`) or a policy file. Unset: every event, unchanged.
    pub policy: Option<String>,
    /// A policy file (alternative to `policy`).
    pub policy_file: Option<PathBuf>,
    /// Shared key of the Forward handshake (the server must be configured
    /// with the same key; it then speaks first).
    pub shared_key: Option<String>,
    /// User authentication in the handshake (with `shared_key`).
    pub username: Option<String>,
    pub password: Option<String>,
    /// Hostname sent in the handshake (default: this machine's).
    pub self_hostname: Option<String>,
    /// TLS to the destination (TLS 1.2+, rustls).
    pub tls: bool,
    /// CA bundle that signs the destination's certificate.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key (mutual TLS).
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Name to verify in the server certificate instead of `host`
    /// (fluent-bit's `tls.vhost`).
    pub tls_server_name: Option<String>,
    /// Reach the servers through an HTTP CONNECT proxy (konnectivity, an
    /// mTLS proxy, squid, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySection>,
    /// WebAssembly filters, run in order after the policy.
    pub filters: Vec<FilterSection>,
    /// Events per filter call (one call per batch).
    pub filter_batch_events: usize,
    /// Forward tag of every event.
    pub tag: String,
    pub host: String,
    pub port: u16,
    /// Standby servers, tried in order when `host:port` is unreachable
    /// (failover, as fluentd's `<server>` list with `standby`).
    pub servers: Vec<ServerSection>,
    /// With `servers`: `failover` (the first reachable server in order) or
    /// `round-robin` (the next server every `rebalance_interval`).
    pub balance: Balance,
    #[serde(with = "humantime_serde")]
    pub rebalance_interval: Duration,
    /// Ask for and wait for acks (at-least-once). Without acks a chunk counts
    /// as delivered once written to the socket.
    pub require_ack: bool,
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// CompressedPackedForward with gzip.
    pub gzip: bool,
    pub gzip_level: u32,
    pub max_batch_events: usize,
    /// Uncompressed bytes per chunk (fluent-bit accepts at most ~6 MB).
    pub max_batch_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Largest encoded event sent; a larger one is dropped (reason
    /// `oversize`) rather than stalling the output on a receiver that must
    /// refuse it. Keep it below the receiver's frame limit (ours: 16 MiB;
    /// fluent-bit's in_forward: 6 MB).
    pub max_record_bytes: usize,
    /// Chunks sent and not yet acked.
    pub max_in_flight: usize,
    /// Sealed chunks waiting for a send slot (one keeps the connection
    /// busy when an ack frees a slot; more only cost memory).
    pub max_pending_chunks: usize,
    #[serde(with = "humantime_serde")]
    pub retry_min: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// With `type = "s3"`: the store, the keys and the objects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Section>,
    /// With `type = "syslog"`: the protocol and the header fields
    /// (`host`, `port`, `tls*` and `proxy` are the output's own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syslog: Option<SyslogSection>,
}

pub use crate::sink::s3::settings::{S3Compression, S3Section};
pub use crate::sink::syslog::settings::{SyslogProtocol, SyslogSection};

impl Default for OutputSection {
    fn default() -> Self {
        OutputSection {
            name: "default".into(),
            kind: OutputKind::Forward,
            path: None,
            policy: None,
            policy_file: None,
            shared_key: None,
            username: None,
            password: None,
            self_hostname: None,
            tls: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_server_name: None,
            proxy: None,
            filters: Vec::new(),
            filter_batch_events: 64,
            tag: "audit".into(),
            host: "127.0.0.1".into(),
            port: 24224,
            servers: Vec::new(),
            balance: Balance::Failover,
            rebalance_interval: Duration::from_secs(30),
            require_ack: true,
            ack_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            gzip: false,
            gzip_level: 1,
            max_batch_events: 2000,
            max_batch_bytes: 1 << 20,
            flush_interval: Duration::from_millis(100),
            max_record_bytes: 15 << 20,
            max_in_flight: 4,
            max_pending_chunks: 1,
            retry_min: Duration::from_millis(200),
            retry_max: Duration::from_secs(10),
            checkpoint_interval: Duration::from_millis(250),
            s3: None,
            syslog: None,
        }
    }
}

/// One WebAssembly filter (a component implementing filters-wit/).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSection {
    /// The component file; reloaded when it changes.
    pub wasm: PathBuf,
    /// Name in logs and metrics (default: the file stem).
    #[serde(default)]
    pub name: Option<String>,
    /// Passed to the filter's `configure` as a JSON object.
    #[serde(default = "empty_table")]
    pub config: serde_json::Value,
    /// `keep` (default), `drop` or `stop` when the filter fails.
    #[serde(default)]
    pub on_error: crate::filter::on_error::OnError,
    /// Deadline of one batch call.
    #[serde(default = "filter_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Linear memory cap of the filter instance.
    #[serde(default = "filter_memory")]
    pub max_memory_bytes: usize,
}

fn empty_table() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}
fn filter_timeout() -> Duration {
    Duration::from_millis(100)
}
fn filter_memory() -> usize {
    64 << 20
}

impl FilterSection {
    /// The filter's name: `name`, else the file stem.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.wasm
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "filter".into())
        })
    }

    /// What the host needs to load it; compiled forms are cached in
    /// `cache_dir`.
    pub fn spec(&self, cache_dir: Option<PathBuf>) -> crate::filter::wasm::Spec {
        crate::filter::wasm::Spec {
            name: self.display_name(),
            path: self.wasm.clone(),
            config: self.config.to_string(),
            timeout: self.timeout,
            max_memory: self.max_memory_bytes,
            cache_dir,
        }
    }
}

/// An HTTP CONNECT proxy in front of an output's servers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySection {
    /// konnectivity-server's Unix socket in http-connect mode.
    pub uds: Option<PathBuf>,
    /// `http://host:port`, or `https://host:port` for TLS (usually mutual)
    /// to the proxy (konnectivity-server, Gardener's VPN endpoint).
    pub url: Option<String>,
    /// With `https`: CA bundle of the proxy's certificate.
    pub ca_file: Option<PathBuf>,
    /// With `https`: client certificate and key.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// With `https`: name to verify instead of the proxy's host.
    pub server_name: Option<String>,
    /// `Host` header of the CONNECT request (default: the target
    /// `host:port`; kube-apiserver sends `127.0.0.1`).
    pub host_header: Option<String>,
    /// Extra CONNECT request headers.
    pub headers: std::collections::BTreeMap<String, String>,
    /// Basic proxy authentication.
    pub username: Option<String>,
    pub password: Option<String>,
}

impl ProxySection {
    /// Checks the settings and builds the transport's proxy.
    pub fn build(&self) -> Result<crate::transport::proxy::Proxy, String> {
        use crate::transport::proxy::{Proxy, Via};
        let https_only = [
            ("ca_file", self.ca_file.is_some()),
            ("cert_file", self.cert_file.is_some()),
            ("key_file", self.key_file.is_some()),
            ("server_name", self.server_name.is_some()),
        ];
        let via = match (&self.uds, &self.url) {
            (Some(p), None) => Via::Uds(p.clone()),
            (None, Some(u)) => {
                let uri: http::Uri = u.parse().map_err(|e| format!("url {u:?}: {e}"))?;
                let scheme = uri.scheme_str().unwrap_or_default().to_ascii_lowercase();
                let host = uri
                    .host()
                    .ok_or_else(|| format!("url {u:?}: no host"))?
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string();
                if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
                    return Err(format!("url {u:?}: only scheme://host:port is allowed"));
                }
                match scheme.as_str() {
                    "http" => Via::Http {
                        host,
                        port: uri.port_u16().unwrap_or(80),
                    },
                    "https" => Via::Https {
                        host,
                        port: uri.port_u16().unwrap_or(443),
                        tls: crate::transport::tls::ClientTls {
                            settings: "proxy.",
                            ca_file: Some(
                                self.ca_file
                                    .clone()
                                    .ok_or("ca_file: required with an https url")?,
                            ),
                            cert_file: self.cert_file.clone(),
                            key_file: self.key_file.clone(),
                            server_name: self.server_name.clone(),
                        },
                    },
                    _ => return Err(format!("url {u:?}: the scheme must be http or https")),
                }
            }
            _ => return Err("set exactly one of uds and url".into()),
        };
        if !matches!(via, Via::Https { .. })
            && let Some((k, _)) = https_only.iter().find(|(_, set)| *set)
        {
            return Err(format!("{k}: only with an https url"));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err("set both cert_file and key_file".into());
        }
        if self.username.is_some() != self.password.is_some() {
            return Err("set both username and password".into());
        }
        // No header injection through configuration.
        let bad = |v: &str| v.contains(['\r', '\n']);
        for (k, v) in &self.headers {
            if k.is_empty()
                || !k
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
            {
                return Err(format!("headers: {k:?} is not a header name"));
            }
            if bad(v) {
                return Err(format!("headers.{k}: must not contain CR or LF"));
            }
        }
        if self.host_header.as_deref().is_some_and(bad) {
            return Err("host_header: must not contain CR or LF".into());
        }
        Ok(Proxy {
            via,
            host_header: self.host_header.clone(),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            basic_auth: self.username.clone().zip(self.password.clone()),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    Failover,
    RoundRobin,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub host: String,
    pub port: u16,
}

/// Destination type of an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    Forward,
    Stdout,
    File,
    /// Objects of JSON lines in S3-compatible storage (`[outputs.s3]`).
    S3,
    /// RFC 5424 syslog over TCP/TLS or RELP (`[outputs.syslog]`).
    Syslog,
}

impl OutputSection {
    /// The policy spec (preset name or file), if any.
    pub fn policy_spec(&self) -> Option<String> {
        self.policy.clone().or_else(|| {
            self.policy_file
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned())
        })
    }

    /// TLS to the servers, if on.
    pub fn client_tls(&self) -> Option<crate::transport::tls::ClientTls> {
        self.tls.then(|| crate::transport::tls::ClientTls {
            settings: "tls_",
            ca_file: self.tls_ca_file.clone(),
            cert_file: self.tls_cert_file.clone(),
            key_file: self.tls_key_file.clone(),
            server_name: self.tls_server_name.clone(),
        })
    }

    /// The proxy in front of the servers, if any (checked by `validate`).
    pub fn proxy(&self) -> Result<Option<crate::transport::proxy::Proxy>, String> {
        self.proxy.as_ref().map(ProxySection::build).transpose()
    }

    /// Upper bound of bytes this output holds between reader and wire,
    /// not counting a single event larger than a batch.
    pub fn buffer_bound(&self) -> usize {
        (self.max_in_flight + self.max_pending_chunks + 1) * self.max_batch_bytes
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiveSection {
    /// `host:port` to listen on.
    pub listen: String,
    /// `stdout`, `null` (discard), or a file path to append to.
    pub output: String,
    /// With a file output: rotate it when it would exceed this size (0: never).
    pub output_max_bytes: u64,
    /// Rotated files kept (`file.1` … `file.N`).
    pub output_keep_files: usize,
    pub max_frame_bytes: usize,
    pub max_decompressed_bytes: usize,
    /// Open connections in all. When full, the oldest connection that has
    /// not authenticated yet is closed to admit a new one.
    pub max_connections: usize,
    /// Open connections from one source address (same eviction rule).
    pub max_connections_per_address: usize,
    /// Memory held for peers across all connections: partial frames,
    /// decompressed messages, their JSON. Unauthenticated connections share
    /// at most half of it. At least twice `max_frame_bytes`.
    pub memory_budget_bytes: usize,
    /// TLS handshake, and the Forward handshake when `shared_key` is set.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Without `shared_key` or client certificates: a connection must send
    /// its first message within this time.
    #[serde(with = "humantime_serde")]
    pub first_message_timeout: Duration,
    /// A message in progress must arrive at this many bytes per second,
    /// measured over 10 s windows (slowloris); 0 turns it off.
    pub min_transfer_rate: u64,
    /// A connection with nothing in progress is closed after this long.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How many recent chunk ids are remembered to drop resent duplicates.
    pub dedupe_window: usize,
    /// Keep the record of what was written per sender stream here, so
    /// events resent after a restart of either side are not written twice
    /// (unset: remembered while the receiver runs).
    pub state_dir: Option<PathBuf>,
    /// A source range still missing this long after later ones arrived is
    /// logged as a GAP and counted (`receiver_gaps_total`).
    #[serde(with = "humantime_serde")]
    pub gap_timeout: Duration,
    /// Write the Forward metadata of an entry (fluent-bit's `[[time,
    /// metadata], record]`) into its JSON line under this top-level key;
    /// unset or empty: dropped.
    pub metadata_key: Option<String>,
    /// Write the Forward tag of each record into its JSON line under this
    /// top-level key; unset or empty: not written.
    pub tag_key: Option<String>,
    /// Require the Forward handshake with this shared key.
    pub shared_key: Option<String>,
    /// With `shared_key`: also require one of these users.
    pub users: Vec<UserSection>,
    /// Hostname sent in HELO/PONG (default: this machine's).
    pub self_hostname: Option<String>,
    /// TLS: server certificate and key (both set = TLS on).
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Require client certificates signed by this CA (mutual TLS).
    pub tls_client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSection {
    pub username: String,
    pub password: String,
}

impl Default for ReceiveSection {
    fn default() -> Self {
        ReceiveSection {
            listen: "127.0.0.1:24224".into(),
            output: "stdout".into(),
            output_max_bytes: 0,
            output_keep_files: 5,
            max_frame_bytes: 16 << 20,
            max_decompressed_bytes: 64 << 20,
            max_connections: 1024,
            max_connections_per_address: 128,
            memory_budget_bytes: 256 << 20,
            handshake_timeout: Duration::from_secs(10),
            first_message_timeout: Duration::from_secs(60),
            min_transfer_rate: 1024,
            idle_timeout: Duration::from_secs(600),
            dedupe_window: 4096,
            state_dir: None,
            gap_timeout: Duration::from_secs(300),
            metadata_key: None,
            tag_key: None,
            shared_key: None,
            users: Vec::new(),
            self_hostname: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0}: not found")]
    Missing(PathBuf),
    #[error("{0}")]
    Invalid(String),
    #[error("--set {0:?}: expected KEY=VALUE")]
    BadSet(String),
}

/// Loads the configuration: file, then `AUDIT_*` env, then `sets`
/// (`key.path=value`, value parsed as TOML, else taken as a string).
pub fn load(file: Option<&Path>, sets: &[String]) -> Result<Config, ConfigError> {
    let mut fig = Figment::new();
    if let Some(p) = file {
        if !p.is_file() {
            return Err(ConfigError::Missing(p.to_path_buf()));
        }
        fig = fig.merge(Toml::file_exact(p));
    }
    let cfg = extract(fig, sets)?;
    validate(&cfg)?;
    Ok(cfg)
}

/// Like [`load`] from the text of a file, without [`validate`] (`check`
/// reports [`problems`] itself).
pub fn load_unvalidated(text: Option<&str>, sets: &[String]) -> Result<Config, ConfigError> {
    let mut fig = Figment::new();
    if let Some(t) = text {
        fig = fig.merge(Toml::string(t));
    }
    extract(fig, sets)
}

/// The file (in `fig`), then `AUDIT_*` variables, then `--set`s.
fn extract(mut fig: Figment, sets: &[String]) -> Result<Config, ConfigError> {
    fig = fig.merge(Env::prefixed("AUDIT_").split("__"));
    for s in sets {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| ConfigError::BadSet(s.clone()))?;
        let v: Value = toml::from_str::<toml::Table>(&format!("v = {v}"))
            .ok()
            .and_then(|t| t.get("v").cloned())
            .and_then(|v| Value::serialize(v).ok())
            .unwrap_or_else(|| Value::from(v.to_string()));
        fig = fig.merge(Serialized::default(k.trim(), v));
    }
    // First pass: validates keys and types with the file/env provenance.
    let _: Config = fig.extract().map_err(explain)?;
    // Second pass: fold the `output` shorthand into outputs[0].
    let mut dict: Dict = fig.extract().map_err(explain)?;
    if let Some(Value::Dict(_, over)) = dict.remove("output") {
        let outputs = dict
            .entry("outputs".to_string())
            .or_insert_with(|| Value::from(Vec::<Value>::new()));
        if let Value::Array(_, list) = outputs {
            if list.is_empty() {
                list.push(Value::from(Dict::new()));
            }
            if let Some(Value::Dict(_, first)) = list.first_mut() {
                merge(first, over);
            }
        }
    }
    let mut cfg: Config = Figment::from(Serialized::defaults(dict))
        .extract()
        .map_err(explain)?;
    if cfg.outputs.is_empty() {
        cfg.outputs.push(OutputSection::default());
    }
    Ok(cfg)
}

/// Merges `over` into `dst`, table by table (`output.proxy.ca_file` from
/// the environment keeps `outputs[0].proxy.url` from the file).
fn merge(dst: &mut Dict, over: Dict) {
    for (k, v) in over {
        match (dst.get_mut(&k), v) {
            (Some(Value::Dict(_, d)), Value::Dict(_, o)) => merge(d, o),
            (_, v) => {
                dst.insert(k, v);
            }
        }
    }
}

fn explain(e: figment::Error) -> ConfigError {
    let msgs: Vec<String> = e
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let src = e
                .metadata
                .as_ref()
                .and_then(|m| m.source.as_ref().map(|s| format!(" (from {s})")))
                .unwrap_or_default();
            if key.is_empty() {
                format!("{}{src}", e.kind)
            } else {
                format!("{key}: {}{src}", e.kind)
            }
        })
        .collect();
    ConfigError::Invalid(msgs.join("; "))
}

/// Checks that cannot be expressed in types.
pub fn validate(cfg: &Config) -> Result<(), ConfigError> {
    let errs = problems(cfg);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid(errs.join("; ")))
    }
}

/// Every problem [`validate`] finds, each as `key: problem`.
pub fn problems(cfg: &Config) -> Vec<String> {
    let mut errs = Vec::new();
    let listens = [
        ("http_listen", cfg.http_listen.as_deref()),
        ("receive.listen", Some(cfg.receive.listen.as_str())),
        ("webhook.listen", cfg.webhook.listen.as_deref()),
    ];
    for (key, addr) in listens {
        if let Some(a) = addr
            && let Err(e) = listen_address(a)
        {
            errs.push(format!("{key}: {a:?} {e}"));
        }
    }
    let r = &cfg.receive;
    if r.memory_budget_bytes < 2 * r.max_frame_bytes {
        errs.push(format!(
            "receive.memory_budget_bytes: {} is less than twice receive.max_frame_bytes ({}): an unauthenticated client could not send one whole frame",
            r.memory_budget_bytes, r.max_frame_bytes
        ));
    }
    if r.max_connections == 0 || r.max_connections_per_address == 0 {
        errs.push(
            "receive.max_connections, receive.max_connections_per_address: must be > 0".into(),
        );
    }
    let w = &cfg.webhook;
    if w.memory_budget_bytes < w.max_body_bytes {
        errs.push(format!(
            "webhook.memory_budget_bytes: {} is less than webhook.max_body_bytes ({})",
            w.memory_budget_bytes, w.max_body_bytes
        ));
    }
    let mut names = std::collections::HashSet::new();
    for (i, o) in cfg.outputs.iter().enumerate() {
        if o.name.is_empty()
            || !o
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            errs.push(format!(
                "outputs[{i}].name: {:?} must be non-empty [A-Za-z0-9_-]",
                o.name
            ));
        }
        if !names.insert(o.name.clone()) {
            errs.push(format!("outputs[{i}].name: {:?} is used twice", o.name));
        }
        if o.port == 0 {
            errs.push(format!("outputs[{i}].port: must not be 0"));
        }
        if o.max_in_flight == 0
            || o.max_pending_chunks == 0
            || o.max_batch_events == 0
            || o.max_batch_bytes == 0
        {
            errs.push(format!(
                "outputs[{i}]: max_in_flight, max_pending_chunks, max_batch_events and max_batch_bytes must be > 0"
            ));
        }
        if o.gzip_level > 9 {
            errs.push(format!(
                "outputs[{i}].gzip_level: {} is not in 0..=9",
                o.gzip_level
            ));
        }
        if o.policy.is_some() && o.policy_file.is_some() {
            errs.push(format!(
                "outputs[{i}]: set either policy or policy_file, not both"
            ));
        }
        if o.kind == OutputKind::File && o.path.is_none() {
            errs.push(format!("outputs[{i}].path: required with type = \"file\""));
        }
        match (o.kind, &o.s3) {
            (OutputKind::S3, None) => {
                errs.push(format!("outputs[{i}].s3: required with type = \"s3\""))
            }
            (OutputKind::S3, Some(s)) => errs.extend(
                crate::sink::s3::problems(s)
                    .into_iter()
                    .map(|e| format!("outputs[{i}].s3.{e}")),
            ),
            (_, Some(_)) => errs.push(format!("outputs[{i}].s3: only with type = \"s3\"")),
            _ => {}
        }
        match (o.kind, &o.syslog) {
            (OutputKind::Syslog, s) => errs.extend(
                crate::sink::syslog::problems(&s.clone().unwrap_or_default())
                    .into_iter()
                    .map(|e| format!("outputs[{i}].syslog.{e}")),
            ),
            (_, Some(_)) => errs.push(format!("outputs[{i}].syslog: only with type = \"syslog\"")),
            _ => {}
        }
        if (o.username.is_some() || o.password.is_some()) && o.shared_key.is_none() {
            errs.push(format!(
                "outputs[{i}]: username/password need shared_key (the handshake carries them)"
            ));
        }
        if o.username.is_some() != o.password.is_some() {
            errs.push(format!("outputs[{i}]: set both username and password"));
        }
        if o.tls && o.tls_ca_file.is_none() {
            errs.push(format!(
                "outputs[{i}].tls_ca_file: required with tls = true"
            ));
        }
        if o.tls_cert_file.is_some() != o.tls_key_file.is_some() {
            errs.push(format!(
                "outputs[{i}]: set both tls_cert_file and tls_key_file"
            ));
        }
        if o.tag.is_empty() {
            errs.push(format!("outputs[{i}].tag: must not be empty"));
        }
        if let Err(e) = o.proxy() {
            errs.push(format!("outputs[{i}].proxy.{e}"));
        }
        if o.filter_batch_events == 0 {
            errs.push(format!("outputs[{i}].filter_batch_events: must be > 0"));
        }
        for (j, f) in o.filters.iter().enumerate() {
            if !f.config.is_object() {
                errs.push(format!("outputs[{i}].filters[{j}].config: must be a table"));
            }
            if f.timeout.is_zero() || f.max_memory_bytes < (1 << 20) {
                errs.push(format!(
                    "outputs[{i}].filters[{j}]: timeout must be > 0 and max_memory_bytes at least 1 MiB"
                ));
            }
        }
    }
    if cfg.tail.max_line_bytes == 0 {
        errs.push("tail.max_line_bytes: must be > 0".into());
    }
    if !cfg.receive.users.is_empty() && cfg.receive.shared_key.is_none() {
        errs.push("receive.users: needs receive.shared_key (the handshake carries them)".into());
    }
    let r = &cfg.receive;
    if r.tls_cert_file.is_some() != r.tls_key_file.is_some() {
        errs.push("receive: set both tls_cert_file and tls_key_file".into());
    }
    if r.tls_client_ca_file.is_some() && r.tls_cert_file.is_none() {
        errs.push("receive.tls_client_ca_file: needs tls_cert_file and tls_key_file".into());
    }
    if cfg.receive.max_frame_bytes < 1024 {
        errs.push("receive.max_frame_bytes: must be at least 1024".into());
    }
    if !cfg.tail.enabled && cfg.webhook.listen.is_none() {
        errs.push("tail.enabled = false and webhook.listen unset: there is nothing to read".into());
    }
    let w = &cfg.webhook;
    if w.listen.is_some() {
        if w.tls_cert_file.is_some() != w.tls_key_file.is_some() {
            errs.push("webhook: set both tls_cert_file and tls_key_file".into());
        }
        if w.tls_client_ca_file.is_some() && w.tls_cert_file.is_none() {
            errs.push("webhook.tls_client_ca_file: needs tls_cert_file and tls_key_file".into());
        }
        if w.tls_cert_file.is_none() && !w.allow_plaintext {
            errs.push(
                "webhook: set tls_cert_file and tls_key_file (HTTPS), or allow_plaintext = true for plain HTTP"
                    .into(),
            );
        }
        if w.max_body_bytes == 0 || w.spool_file_bytes == 0 {
            errs.push("webhook: max_body_bytes and spool_file_bytes must be > 0".into());
        }
        if w.spool_max_bytes < 2 * w.spool_file_bytes.max(w.max_body_bytes as u64) {
            errs.push(format!(
                "webhook.spool_max_bytes: {} must be at least twice spool_file_bytes and max_body_bytes",
                w.spool_max_bytes
            ));
        }
    }
    errs
}

/// `HOST:PORT` (`[::1]:PORT` for IPv6) with a port from 0 to 65535.
fn listen_address(a: &str) -> Result<(), &'static str> {
    let (host, port) = a
        .rsplit_once(':')
        .ok_or("is not HOST:PORT (e.g. \"127.0.0.1:24224\")")?;
    port.parse::<u16>()
        .map_err(|_| "has no port from 0 to 65535 after the last ':'")?;
    if host.is_empty() {
        return Err("has no host before the port (use 0.0.0.0 for every address)");
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err("has an IPv6 address without brackets (write [::1]:PORT)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_file(text: &str, sets: &[&str]) -> Result<Config, ConfigError> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        load(Some(&p), &sets)
    }

    #[test]
    fn defaults_and_file_values() {
        let c = with_file("[tail]\npath = \"/x/audit.log\"\n[[outputs]]\nname = \"a\"\nport = 1\nack_timeout = \"2s\"\n", &[]).unwrap();
        assert_eq!(c.tail.path, PathBuf::from("/x/audit.log"));
        assert_eq!(c.outputs.len(), 1);
        assert_eq!(c.outputs[0].ack_timeout, Duration::from_secs(2));
        assert_eq!(c.outputs[0].tag, "audit");
    }

    #[test]
    fn unknown_key_is_an_error_with_its_path() {
        let e = with_file("[tail]\npaht = \"/x\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("tail") && e.contains("paht"), "{e}");
        let e = with_file("[[outputs]]\nhostt = \"x\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("hostt"), "{e}");
    }

    #[test]
    fn flags_override_file_and_output_shorthand_merges() {
        let c = with_file(
            "[[outputs]]\nname = \"a\"\nport = 1\n[[outputs]]\nname = \"b\"\n",
            &["output.port=2", "tail.max_line_bytes=100", "output.host=h"],
        )
        .unwrap();
        assert_eq!(c.outputs[0].port, 2);
        assert_eq!(c.outputs[0].name, "a");
        assert_eq!(c.outputs[0].host, "h");
        assert_eq!(c.outputs[1].name, "b");
        assert_eq!(c.tail.max_line_bytes, 100);
    }

    #[test]
    fn invalid_values_are_reported() {
        let e = with_file("[[outputs]]\nname = \"a b\"\nport = 0\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("outputs[0].name") && e.contains("outputs[0].port"),
            "{e}"
        );
        let e = with_file("[tail]\nmax_line_bytes = \"big\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_line_bytes"), "{e}");
        assert!(matches!(
            load(Some(Path::new("/nonexistent.toml")), &[]),
            Err(ConfigError::Missing(_))
        ));
    }

    #[test]
    fn proxy_settings() {
        use crate::transport::proxy::Via;
        // File gives the url, flags add certificates: tables merge.
        let c = with_file(
            "[[outputs]]\nname = \"a\"\n[outputs.proxy]\nurl = \"https://vpn-seed-server:9443\"\nheaders = { X-Route = \"a\" }\n",
            &[
                "output.proxy.ca_file=\"/c/ca.crt\"",
                "output.proxy.cert_file=\"/c/tls.crt\"",
                "output.proxy.key_file=\"/c/tls.key\"",
            ],
        )
        .unwrap();
        let p = c.outputs[0].proxy().unwrap().unwrap();
        match &p.via {
            Via::Https { host, port, tls } => {
                assert_eq!((host.as_str(), *port), ("vpn-seed-server", 9443));
                assert_eq!(tls.key_file.as_deref(), Some(Path::new("/c/tls.key")));
            }
            v => panic!("{v:?}"),
        }
        assert_eq!(p.headers, vec![("X-Route".to_string(), "a".to_string())]);
        let c = with_file("", &["output.proxy.uds=\"/k/konnectivity-server.socket\""]).unwrap();
        assert!(matches!(
            c.outputs[0].proxy().unwrap().unwrap().via,
            Via::Uds(_)
        ));
        let c = with_file("", &["output.proxy.url=\"http://[::1]:3128\""]).unwrap();
        assert!(matches!(
            c.outputs[0].proxy().unwrap().unwrap().via,
            Via::Http { ref host, port: 3128 } if host == "::1"
        ));
        for (bad, want) in [
            ("output.proxy.url=\"https://p:1\"", "ca_file: required"),
            ("output.proxy.url=\"socks5://p:1\"", "scheme"),
            (
                "output.proxy.url=\"http://p:1/x\"",
                "only scheme://host:port",
            ),
            (
                "output.proxy.host_header=\"a\"",
                "exactly one of uds and url",
            ),
            ("output.proxy.ca_file=\"/x\"", "exactly one"),
        ] {
            let e = with_file("", &[bad]).unwrap_err().to_string();
            assert!(
                e.contains("outputs[0].proxy.") && e.contains(want),
                "{bad}: {e}"
            );
        }
        let e = with_file(
            "[[outputs]]\n[outputs.proxy]\nurl = \"http://p:1\"\nca_file = \"/x\"\nhost_header = \"a\\r\\nX: y\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("ca_file: only with an https url"), "{e}");
        let e = with_file(
            "[[outputs]]\n[outputs.proxy]\nurl = \"http://p:1\"\nhost_header = \"a\\r\\nX: y\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("host_header: must not contain CR or LF"), "{e}");
    }
}
