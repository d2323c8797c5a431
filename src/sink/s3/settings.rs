//! `[outputs.s3]`: the S3 output's settings (part of the configuration
//! file; `config` re-exports them).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// `[outputs.s3]`: where and how objects are written (see `sink::s3`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Section {
    pub bucket: String,
    /// `https://host[:port]` of an S3-compatible store (`http://` only for
    /// loopback tests). Unset: AWS, or `AWS_ENDPOINT_URL`.
    pub endpoint: Option<String>,
    /// Unset: `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// `endpoint/bucket/key` requests, which most non-AWS stores need
    /// (virtual-hosted style needs the bucket name in DNS).
    pub path_style: bool,
    /// Object key template; `{id}` is required (see `sink::s3::key`).
    pub key: String,
    /// Values of user placeholders in `key`, e.g. `{ cluster = "shoot--a" }`.
    pub key_vars: std::collections::BTreeMap<String, String>,
    /// `gzip` (default) or `none`.
    pub compression: S3Compression,
    pub gzip_level: u32,
    /// Uncompressed bytes after which an object is closed and uploaded.
    pub max_object_bytes: usize,
    /// Age after which an open object is uploaded, however small.
    #[serde(with = "humantime_serde")]
    pub max_object_age: Duration,
    /// Objects larger than this (compressed) are uploaded in parts of
    /// this size (S3's minimum part is 5 MiB).
    pub part_bytes: usize,
    /// Refuse to replace an existing key (`If-None-Match: *`); a key found
    /// existing holds the same span, so it counts as stored.
    pub no_overwrite: bool,
    /// AWS shared-credentials file (`aws_access_key_id`, ...), re-read when
    /// it changes. Unset: the environment (`AWS_ACCESS_KEY_ID`, web identity
    /// via `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`, instance metadata).
    pub credentials_file: Option<PathBuf>,
    /// Profile in `credentials_file`.
    pub profile: String,
    /// CA bundle for the endpoint's certificate (added to the system roots).
    pub ca_file: Option<PathBuf>,
    /// HTTP(S) proxy for the store (`http://host:port`).
    pub proxy_url: Option<String>,
    /// Deadline of one request (a part, a whole small object).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for S3Section {
    fn default() -> Self {
        S3Section {
            bucket: String::new(),
            endpoint: None,
            region: None,
            path_style: false,
            key: "audit/{output}/{yyyy}/{mm}/{dd}/{hh}/{id}.jsonl.gz".into(),
            key_vars: Default::default(),
            compression: S3Compression::Gzip,
            gzip_level: 6,
            max_object_bytes: 64 << 20,
            max_object_age: Duration::from_secs(300),
            part_bytes: 16 << 20,
            no_overwrite: true,
            credentials_file: None,
            profile: "default".into(),
            ca_file: None,
            proxy_url: None,
            request_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum S3Compression {
    Gzip,
    None,
}
