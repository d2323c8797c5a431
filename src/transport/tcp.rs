//! Plain TCP with a connect timeout and TCP_NODELAY. A dead peer is
//! detected by the ack timeout, not by TCP keepalive.

use super::ConnectError;
use std::time::Duration;
use tokio::net::TcpStream;

/// Connects to `host:port`, trying each resolved address in turn.
pub async fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let addr = format!("{host}:{port}");
    let fut = TcpStream::connect(addr.as_str());
    let s = match tokio::time::timeout(timeout, fut).await {
        Err(_) => {
            return Err(ConnectError::Timeout {
                addr,
                secs: timeout.as_secs_f64(),
            });
        }
        Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
        Ok(Ok(s)) => s,
    };
    let _ = s.set_nodelay(true);
    Ok(s)
}
