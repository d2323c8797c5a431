//! TLS with rustls (ring provider, TLS 1.2 and 1.3): client with CA bundle,
//! optional client certificate and server-name override; server with
//! optional client-certificate verification. Certificate and key files are
//! read again whenever they change (Kubernetes Secret rotation): the client
//! on every new connection, the server on every accepted connection, so a
//! rotation never needs a restart and never drops data in flight.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio_rustls::rustls;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{setting} = {path}: {error}")]
    File {
        setting: String,
        path: PathBuf,
        error: String,
    },
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    #[error("TLS handshake with {peer}: {error}")]
    Handshake { peer: String, error: std::io::Error },
    #[error("TLS handshake with {0}: timed out")]
    Timeout(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(setting: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |error: String| TlsError::File {
        setting: setting.to_string(),
        path: path.to_path_buf(),
        error,
    };
    let v: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    if v.is_empty() {
        return Err(err("no PEM certificate in the file".into()));
    }
    Ok(v)
}

fn key(setting: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        setting: setting.to_string(),
        path: path.to_path_buf(),
        error: e.to_string(),
    })
}

fn roots(setting: &str, path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for c in certs(setting, path)? {
        store.add(c).map_err(|e| TlsError::File {
            setting: setting.to_string(),
            path: path.to_path_buf(),
            error: e.to_string(),
        })?;
    }
    Ok(store)
}

/// Client side settings of one destination (or of a proxy).
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// Prefix of the setting names in error messages: `tls_` for an
    /// output (`tls_ca_file`), `proxy.` for its proxy (`proxy.ca_file`).
    pub settings: &'static str,
    /// CA bundle that signs the server's certificate.
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Name to verify instead of the host (the target is often an IP).
    pub server_name: Option<String>,
}

impl ClientTls {
    /// Reads the files and builds a rustls client configuration.
    pub fn config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let p = self.settings;
        let (ca_s, cert_s, key_s) = (
            format!("{p}ca_file"),
            format!("{p}cert_file"),
            format!("{p}key_file"),
        );
        let ca = self
            .ca_file
            .as_deref()
            .ok_or_else(|| TlsError::Config(format!("{ca_s} is required to verify the server")))?;
        let b = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots(&ca_s, ca)?);
        let cfg = match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => b
                .with_client_auth_cert(certs(&cert_s, c)?, key(&key_s, k)?)
                .map_err(|e| TlsError::Config(format!("{cert_s}/{key_s}: {e}")))?,
            (None, None) => b.with_no_client_auth(),
            _ => {
                return Err(TlsError::Config(format!("set both {cert_s} and {key_s}")));
            }
        };
        Ok(Arc::new(cfg))
    }

    /// TLS over an established stream (also inside a proxy tunnel).
    pub async fn connect(
        &self,
        host: &str,
        stream: super::Stream,
        timeout: Duration,
    ) -> Result<super::Stream, TlsError> {
        let cfg = self.config()?;
        let name = self.server_name.clone().unwrap_or_else(|| host.to_string());
        let sn =
            ServerName::try_from(name.clone()).map_err(|_| TlsError::ServerName(name.clone()))?;
        let c = tokio_rustls::TlsConnector::from(cfg);
        match tokio::time::timeout(timeout, c.connect(sn, stream)).await {
            Err(_) => Err(TlsError::Timeout(name)),
            Ok(Err(error)) => Err(TlsError::Handshake { peer: name, error }),
            Ok(Ok(s)) => Ok(Box::new(s)),
        }
    }
}

/// The TLS alert an I/O error carries, e.g. a rejected client certificate
/// (with TLS 1.3 it arrives at the first read after the handshake).
pub fn alert(e: &std::io::Error) -> Option<String> {
    e.get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .and_then(|r| match r {
            rustls::Error::AlertReceived(a) => Some(format!("received fatal alert: {a:?}")),
            _ => None,
        })
}

/// Server side settings.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca_file: Option<PathBuf>,
}

impl ServerTls {
    pub fn config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let b = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let b = match &self.client_ca_file {
            Some(ca) => {
                let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots("tls_client_ca_file", ca)?),
                    provider(),
                )
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
                b.with_client_cert_verifier(v)
            }
            None => b.with_no_client_auth(),
        };
        let cfg = b
            .with_single_cert(
                certs("tls_cert_file", &self.cert_file)?,
                key("tls_key_file", &self.key_file)?,
            )
            .map_err(|e| TlsError::Config(format!("tls_cert_file/tls_key_file: {e}")))?;
        Ok(Arc::new(cfg))
    }

    fn stamp(&self) -> Vec<Option<SystemTime>> {
        [
            Some(&self.cert_file),
            Some(&self.key_file),
            self.client_ca_file.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
    }
}

/// A TLS acceptor that rebuilds itself when the files change. A broken new
/// set of files is reported and the previous configuration kept.
pub struct ReloadingAcceptor {
    settings: ServerTls,
    current: Mutex<(Vec<Option<SystemTime>>, Arc<rustls::ServerConfig>)>,
}

impl ReloadingAcceptor {
    pub fn new(settings: ServerTls) -> Result<Self, TlsError> {
        let cfg = settings.config()?;
        Ok(ReloadingAcceptor {
            current: Mutex::new((settings.stamp(), cfg)),
            settings,
        })
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let stamp = self.settings.stamp();
        let mut cur = match self.current.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if cur.0 != stamp {
            match self.settings.config() {
                Ok(c) => {
                    tracing::info!("TLS certificate files changed; new connections use them");
                    *cur = (stamp, c);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "TLS certificate files changed but cannot be used; keeping the previous ones");
                    cur.0 = stamp;
                }
            }
        }
        tokio_rustls::TlsAcceptor::from(cur.1.clone())
    }
}
