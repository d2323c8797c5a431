//! `[outputs.syslog]`: the syslog output's settings (part of the
//! configuration file; `config` re-exports them).

use serde::{Deserialize, Serialize};

/// `[outputs.syslog]` (see `sink::syslog`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyslogSection {
    /// `tcp`: RFC 5424 messages with octet-counted framing (RFC 6587
    /// §3.4.1), over TLS with the output's `tls` (RFC 5425); no
    /// acknowledgements. `relp`: rsyslog's RELP, each message acknowledged.
    pub protocol: SyslogProtocol,
    /// Name (`kern` .. `local7`, RFC 5424 §6.2.1) or number 0..=23.
    pub facility: String,
    /// Name (`emerg` .. `debug`) or number 0..=7.
    pub severity: String,
    /// APP-NAME (at most 48 printable ASCII characters).
    pub app_name: String,
    /// HOSTNAME (default: this machine's name).
    pub hostname: Option<String>,
    /// MSGID (at most 32 characters; `-` for none).
    pub msgid: String,
    /// RELP: messages sent and not yet acknowledged (librelp's window).
    pub window: usize,
}

impl Default for SyslogSection {
    fn default() -> Self {
        SyslogSection {
            protocol: SyslogProtocol::Relp,
            facility: "local0".into(),
            severity: "info".into(),
            app_name: "kube-apiserver".into(),
            hostname: None,
            msgid: "audit".into(),
            window: 128,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogProtocol {
    Tcp,
    Relp,
}
