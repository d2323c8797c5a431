//! The store client (`object_store`'s S3 implementation: SigV4 signing,
//! multipart, retries of single requests) built from `[outputs.s3]`, and a
//! credentials provider that re-reads an AWS shared-credentials file.

use super::settings::S3Section;
use object_store::aws::{AmazonS3Builder, AwsCredential, S3ConditionalPut};
use object_store::{BackoffConfig, ClientOptions, CredentialProvider, ObjectStore, RetryConfig};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("s3.ca_file {path}: {error}")]
    Ca { path: PathBuf, error: String },
    #[error("s3: {0}")]
    Build(#[from] object_store::Error),
}

/// Builds the store: the environment first (`AWS_*`, as the AWS SDKs
/// read it, web identity included), then the section's settings.
pub fn build(s: &S3Section) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let mut opts = ClientOptions::new()
        .with_timeout(s.request_timeout)
        .with_connect_timeout(Duration::from_secs(10));
    if let Some(p) = &s.ca_file {
        let ca = |error: String| StoreError::Ca {
            path: p.clone(),
            error,
        };
        let pem = std::fs::read(p).map_err(|e| ca(e.to_string()))?;
        let certs =
            object_store::Certificate::from_pem_bundle(&pem).map_err(|e| ca(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca("no certificate in the file".into()));
        }
        for c in certs {
            opts = opts.with_root_certificate(c);
        }
    }
    if let Some(u) = &s.proxy_url {
        opts = opts.with_proxy_url(u);
    }
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(&s.bucket)
        .with_virtual_hosted_style_request(!s.path_style)
        .with_client_options(opts)
        // One request is retried briefly here; the output's own loop
        // retries the object for as long as it takes (with backoff).
        .with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: 2,
            retry_timeout: s.request_timeout,
        });
    if s.no_overwrite {
        b = b.with_conditional_put(S3ConditionalPut::ETagMatch);
    }
    if let Some(r) = &s.region {
        b = b.with_region(r);
    } else if std::env::var_os("AWS_REGION").is_none()
        && std::env::var_os("AWS_DEFAULT_REGION").is_none()
    {
        b = b.with_region("us-east-1");
    }
    if let Some(e) = &s.endpoint {
        b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
    }
    if let Some(f) = &s.credentials_file {
        b = b.with_credentials(Arc::new(FileCredentials {
            path: f.clone(),
            profile: s.profile.clone(),
            cached: Mutex::new(None),
        }));
    }
    Ok(Arc::new(b.build()?))
}

/// What `check` verifies beyond the section's syntax: the files it names
/// (the CA bundle, the credentials file and its profile), and that the
/// store client can be built.
pub fn check_files(s: &S3Section) -> Vec<String> {
    let mut errs = Vec::new();
    if let Some(f) = &s.credentials_file {
        match std::fs::read_to_string(f) {
            Ok(t) => {
                if let Err(e) = parse_credentials(&t, &s.profile) {
                    errs.push(format!("s3.credentials_file: {}: {e}", f.display()));
                }
            }
            Err(e) => errs.push(format!("s3.credentials_file: {}: {e}", f.display())),
        }
    }
    if let Err(e) = build(s) {
        errs.push(e.to_string());
    }
    errs
}

/// An AWS shared-credentials file (`[profile]` sections with
/// `aws_access_key_id`, `aws_secret_access_key`, `aws_session_token`), read
/// again whenever its modification time changes: a rotated Secret applies
/// to the next request.
#[derive(Debug)]
struct FileCredentials {
    path: PathBuf,
    profile: String,
    cached: Mutex<Option<(SystemTime, Arc<AwsCredential>)>>,
}

#[async_trait::async_trait]
impl CredentialProvider for FileCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let err = |e: String| object_store::Error::Generic {
            store: "S3",
            source: format!("s3.credentials_file {}: {e}", self.path.display()).into(),
        };
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .map_err(|e| err(e.to_string()))?;
        if let Ok(c) = self.cached.lock()
            && let Some((t, cred)) = c.as_ref()
            && *t == mtime
        {
            return Ok(cred.clone());
        }
        let text = std::fs::read_to_string(&self.path).map_err(|e| err(e.to_string()))?;
        let cred = Arc::new(parse_credentials(&text, &self.profile).map_err(err)?);
        if let Ok(mut c) = self.cached.lock() {
            *c = Some((mtime, cred.clone()));
        }
        Ok(cred)
    }
}

/// The `profile` section of an AWS shared-credentials file.
pub fn parse_credentials(text: &str, profile: &str) -> Result<AwsCredential, String> {
    let (mut key_id, mut secret, mut token) = (None, None, None);
    let mut inside = false;
    for line in text.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if let Some(name) = l.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            inside = name == profile || name.strip_prefix("profile ") == Some(profile);
            continue;
        }
        if !inside {
            continue;
        }
        if let Some((k, v)) = l.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => key_id = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    match (key_id, secret) {
        (Some(key_id), Some(secret_key)) if !key_id.is_empty() && !secret_key.is_empty() => {
            Ok(AwsCredential {
                key_id,
                secret_key,
                token,
            })
        }
        _ => Err(format!(
            "profile [{profile}] lacks aws_access_key_id or aws_secret_access_key"
        )),
    }
}

/// A short reason for a failed request (a metric label): `http_<status>`,
/// `timeout`, `connect`, `exists` or `other`.
pub fn reason(e: &object_store::Error) -> String {
    if matches!(e, object_store::Error::AlreadyExists { .. }) {
        return "exists".into();
    }
    let text = format!("{e}");
    if let Some(i) = text.find("status code: ") {
        let code = &text[i + 13..];
        if code.len() >= 3 && code.as_bytes()[..3].iter().all(u8::is_ascii_digit) {
            return format!("http_{}", &code[..3]);
        }
    }
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = src {
        let t = s.to_string().to_ascii_lowercase();
        if t.contains("timed out") || t.contains("timeout") {
            return "timeout".into();
        }
        if t.contains("connect") {
            return "connect".into();
        }
        src = s.source();
    }
    "other".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_named_profile_of_a_credentials_file() {
        let text = "# comment\n[default]\naws_access_key_id = AK1\naws_secret_access_key=S1\n\n[profile archive]\naws_access_key_id=AK2\naws_secret_access_key = S2\naws_session_token = T2\n";
        let d = parse_credentials(text, "default").unwrap();
        assert_eq!((d.key_id.as_str(), d.secret_key.as_str()), ("AK1", "S1"));
        assert!(d.token.is_none());
        let a = parse_credentials(text, "archive").unwrap();
        assert_eq!(a.token.as_deref(), Some("T2"));
        let e = parse_credentials(text, "other").unwrap_err();
        assert!(e.contains("[other]"), "{e}");
    }
}
