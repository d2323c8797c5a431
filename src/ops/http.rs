//! The operations endpoint (off unless `http_listen` is set): `/metrics`
//! (Prometheus text format), `/healthz` (alive), `/readyz` (ready to serve).

use crate::ops::metrics::{Metrics, OutputMetrics};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info};

/// What the probes look at.
pub enum Probe {
    /// The forwarder: one entry per output.
    Forward {
        outputs: Vec<OutputMetrics>,
        grace: Duration,
    },
    /// The receiver: alive and ready once listening.
    Receive,
}

pub struct State {
    pub metrics: Arc<Metrics>,
    /// Replaced on configuration reload.
    pub probe: std::sync::Mutex<Probe>,
}

impl State {
    fn probe(&self) -> Result<std::sync::MutexGuard<'_, Probe>, String> {
        self.probe
            .lock()
            .map_err(|_| "internal: probe lock poisoned".to_string())
    }

    /// `/healthz`: every tail reader is running.
    fn healthy(&self) -> Result<(), String> {
        let probe = self.probe()?;
        match &*probe {
            Probe::Receive => Ok(()),
            Probe::Forward { outputs, .. } => {
                let dead: Vec<&str> = outputs
                    .iter()
                    .filter(|o| o.tail_running.get() == 0)
                    .map(|o| o.name.as_str())
                    .collect();
                if dead.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "tail not running for output(s): {}",
                        dead.join(", ")
                    ))
                }
            }
        }
    }

    /// `/readyz`: healthy, and at least one output connected or within
    /// `readiness_grace` of losing (or not yet having) its connection.
    fn ready(&self) -> Result<(), String> {
        self.healthy()?;
        let probe = self.probe()?;
        match &*probe {
            Probe::Receive => Ok(()),
            Probe::Forward { outputs, grace } => {
                let now = crate::record::time::EventTime::now().as_f64();
                let ok = outputs.iter().any(|o| {
                    o.connected.get() == 1 || {
                        let since = o.down_since();
                        since > 0.0 && now - since < grace.as_secs_f64()
                    }
                });
                if ok {
                    Ok(())
                } else {
                    Err(format!(
                        "no output connected for longer than readiness_grace ({grace:?})"
                    ))
                }
            }
        }
    }
}

fn reply(code: StatusCode, ctype: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    if let Ok(v) = ctype.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn handle(
    req: Request<Incoming>,
    st: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let probe = |r: Result<(), String>| match r {
        Ok(()) => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        Err(e) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("{e}\n"),
        ),
    };
    Ok(match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            st.metrics.encode(),
        ),
        "/healthz" => probe(st.healthy()),
        "/readyz" => probe(st.ready()),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /metrics, /healthz, /readyz\n".into(),
        ),
    })
}

/// Binds `addr` (errors name the setting) and returns the serving future.
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding http_listen = {addr:?}: {e}")))
}

/// Serves until `shutdown`.
pub async fn serve(listener: TcpListener, st: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    if let Ok(a) = listener.local_addr() {
        info!(listen = %a, "http endpoint listening (/metrics, /healthz, /readyz)");
    }
    loop {
        let (sock, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    debug!(error = %e, "http accept failed");
                    continue;
                }
            },
            _ = crate::stopped(&mut shutdown) => return,
        };
        let st = st.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(req, st.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                .await;
        });
    }
}
