//! Command-line interface. Flags override `AUDIT_*` environment variables,
//! which override the config file (see `config`).

use crate::ops::logging::LogFormat;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "audit-forwarder",
    version,
    about = "Forwards Kubernetes audit logs over the Fluent Forward protocol, without loss"
)]
pub struct Cli {
    /// Log filter (e.g. `info`, `debug`); overrides `log_level`.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// Log format; overrides `log_format`.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Tail the audit log and forward it (the kube-apiserver sidecar).
    Forward(Box<ForwardArgs>),
    /// Accept Forward connections and write each event as a JSON line (in the cluster).
    Receive(ReceiveArgs),
    /// Validate a configuration and exit (non-zero on any problem).
    Check(ConfigArgs),
    /// Show the whole relay working on loopback with generated events.
    Demo(DemoArgs),
    /// Work with audit policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Develop and try WebAssembly filters.
    #[command(subcommand)]
    Filter(FilterCommand),
    /// Shell completions and the man page, generated from these definitions.
    #[command(subcommand)]
    Generate(GenerateCommand),
}

#[derive(Debug, Subcommand)]
pub enum GenerateCommand {
    /// Print a completion script: `audit-forwarder generate completions bash
    /// > /etc/bash_completion.d/audit-forwarder`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `audit-forwarder generate man > audit-forwarder.1`.
    Man,
}

#[derive(Debug, Subcommand)]
pub enum FilterCommand {
    /// Run filters over events (JSON lines from a file or stdin) and print
    /// one JSON line per event: each filter's decision (keep, changed,
    /// drop), the result and the event as it would be forwarded. Either
    /// `--wasm` filters, or `--config FILE --output NAME`: exactly that
    /// output's policy and filter chain, each filter with its own config.
    /// Exits non-zero if a filter cannot be loaded or fails.
    Test {
        /// The filter component (.wasm); repeat for a chain.
        #[arg(long, required_unless_present = "output", conflicts_with = "output")]
        wasm: Vec<PathBuf>,
        /// With `--wasm`: a filter config value, `[N:]KEY=VALUE` (TOML value,
        /// else a string; `N:` for the Nth `--wasm` only, from 1; else every
        /// filter); repeatable. With `--output`: the configuration file.
        #[arg(long = "config", value_name = "[N:]KEY=VALUE|FILE")]
        config: Vec<String>,
        /// Run this output of the `--config` file: its policy and filters.
        #[arg(long, requires = "config")]
        output: Option<String>,
        /// Events per call.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Deadline per call.
        #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// Events, one JSON object per line (default: stdin).
        file: Option<PathBuf>,
    },
    /// Compile a filter component for this build into `out` (the forwarder
    /// runs this in a child process, so the compiler's memory is not kept).
    #[command(hide = true)]
    Compile {
        #[arg(long)]
        wasm: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print the decision (level, rule index, action) for each event of a JSON-lines file or stdin.
    Eval {
        /// A preset (`metadata`, `minimal`, `recommended`) or a policy file.
        #[arg(long)]
        policy: String,
        /// Events, one JSON object per line (default: stdin).
        file: Option<PathBuf>,
    },
}

#[derive(Debug, Args, Clone, Default)]
pub struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, short = 'c', env = "AUDIT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Set any key, e.g. `--set tail.max_line_bytes=1048576` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ForwardArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Read to the end of the current files, wait for every ack, exit 0.
    #[arg(long)]
    pub oneshot: bool,
    /// The audit log to follow (`tail.path`).
    #[arg(long, visible_alias = "audit-log-path", value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// Directory for checkpoints (`state_dir`).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Forward server host of the first output (`output.host`).
    #[arg(long)]
    pub host: Option<String>,
    /// Forward server port of the first output (`output.port`).
    #[arg(long)]
    pub port: Option<u16>,
    /// Forward tag of the first output (`output.tag`).
    #[arg(long)]
    pub tag: Option<String>,
    /// CA bundle for TLS to the first output; turns TLS on (predecessor's flag).
    #[arg(long, value_name = "FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate for mutual TLS (predecessor's flag).
    #[arg(long, value_name = "FILE")]
    pub tls_crt_file: Option<PathBuf>,
    /// Client key for mutual TLS (predecessor's flag).
    #[arg(long, value_name = "FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// Server name to verify instead of the host (predecessor's flag, fluent-bit's tls.vhost).
    #[arg(long, value_name = "NAME")]
    pub tls_vhost: Option<String>,
    /// Tunnel through konnectivity-server's Unix socket (`output.proxy.uds`; predecessor's flag).
    #[arg(long, value_name = "PATH")]
    pub konnectivity_uds_socket: Option<PathBuf>,
    /// CONNECT proxy host (`output.proxy.url`; https when --proxy-ca-file is set).
    #[arg(long, value_name = "HOST", requires = "proxy_port")]
    pub proxy_host: Option<String>,
    /// CONNECT proxy port.
    #[arg(long, value_name = "PORT", requires = "proxy_host")]
    pub proxy_port: Option<u16>,
    /// CA bundle of the proxy's certificate (`output.proxy.ca_file`).
    #[arg(long, value_name = "FILE", requires = "proxy_host")]
    pub proxy_ca_file: Option<PathBuf>,
    /// Client certificate for mutual TLS to the proxy (`output.proxy.cert_file`).
    #[arg(long, value_name = "FILE", requires = "proxy_host")]
    pub proxy_client_crt_file: Option<PathBuf>,
    /// Client key for mutual TLS to the proxy (`output.proxy.key_file`).
    #[arg(long, value_name = "FILE", requires = "proxy_host")]
    pub proxy_client_key_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReceiveArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Address to listen on (`receive.listen`), e.g. 0.0.0.0:24224.
    #[arg(long)]
    pub listen: Option<String>,
    /// `stdout`, `null`, or a file to append to (`receive.output`).
    #[arg(long)]
    pub output: Option<String>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many events to generate.
    #[arg(long, default_value_t = 2000)]
    pub events: usize,
    /// How many received events to print in full.
    #[arg(long, default_value_t = 3)]
    pub show: usize,
    /// The add-cluster-id WASM filter for the owner's output (default: the
    /// built example in example-filters/ or the image's
    /// /usr/share/audit-forwarder/filters/, if present).
    #[arg(long, value_name = "WASM")]
    pub filter: Option<PathBuf>,
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

impl ForwardArgs {
    /// The `--set` list with the convenience flags appended (they win).
    pub fn sets(&self) -> Vec<String> {
        let mut v = self.config.set.clone();
        if let Some(p) = &self.path {
            v.push(format!("tail.path={}", quote(&p.to_string_lossy())));
        }
        if let Some(p) = &self.state_dir {
            v.push(format!("state_dir={}", quote(&p.to_string_lossy())));
        }
        if let Some(h) = &self.host {
            v.push(format!("output.host={}", quote(h)));
        }
        if let Some(p) = self.port {
            v.push(format!("output.port={p}"));
        }
        if let Some(t) = &self.tag {
            v.push(format!("output.tag={}", quote(t)));
        }
        if let Some(p) = &self.tls_ca_file {
            v.push("output.tls=true".into());
            v.push(format!(
                "output.tls_ca_file={}",
                quote(&p.to_string_lossy())
            ));
        }
        if let Some(p) = &self.tls_crt_file {
            v.push(format!(
                "output.tls_cert_file={}",
                quote(&p.to_string_lossy())
            ));
        }
        if let Some(p) = &self.tls_key_file {
            v.push(format!(
                "output.tls_key_file={}",
                quote(&p.to_string_lossy())
            ));
        }
        if let Some(n) = &self.tls_vhost {
            v.push(format!("output.tls_server_name={}", quote(n)));
        }
        let path = |k: &str, p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| format!("output.proxy.{k}={}", quote(&p.to_string_lossy())))
        };
        v.extend(path("uds", &self.konnectivity_uds_socket));
        if let (Some(h), Some(p)) = (&self.proxy_host, self.proxy_port) {
            let scheme = if self.proxy_ca_file.is_some() {
                "https"
            } else {
                "http"
            };
            let h = if h.contains(':') {
                format!("[{h}]")
            } else {
                h.clone()
            };
            v.push(format!(
                "output.proxy.url={}",
                quote(&format!("{scheme}://{h}:{p}"))
            ));
        }
        v.extend(path("ca_file", &self.proxy_ca_file));
        v.extend(path("cert_file", &self.proxy_client_crt_file));
        v.extend(path("key_file", &self.proxy_client_key_file));
        v
    }
}

impl ReceiveArgs {
    pub fn sets(&self) -> Vec<String> {
        let mut v = self.config.set.clone();
        if let Some(l) = &self.listen {
            v.push(format!("receive.listen={}", quote(l)));
        }
        if let Some(o) = &self.output {
            v.push(format!("receive.output={}", quote(o)));
        }
        v
    }
}
