//! Connecting to a running appliance: over its Unix socket (the default), or over TCP with
//! mutual TLS (`https://HOST:PORT`, a client certificate, and the CA that signed the
//! server's).
//!
//! Both go through tonic's custom-connector hook: tonic itself does no TLS here, so the
//! client uses the same rustls configuration (TLS 1.3, X25519MLKEM768 first) as the server.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::pb::handlers_client::HandlersClient;
use crate::pb::lb_client::LbClient;
use crate::pb::placement_client::PlacementClient;
use crate::pb::stats_client::StatsClient;
use crate::pb::system_client::SystemClient;
use crate::pb::workers_client::WorkersClient;
use crate::tls::{self, Pem, TlsError};

/// Where the server is.
#[derive(Debug, Clone)]
pub enum Target {
    Unix(PathBuf),
    /// `endpoint` is `https://HOST:PORT`.
    Tls {
        endpoint: String,
        ca: Pem,
        identity: Option<(Pem, Pem)>,
    },
}

/// Errors connecting.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("`{0}` is not an endpoint: expected https://HOST:PORT")]
    Endpoint(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot connect to {target}: {msg}")]
    Connect { target: String, msg: String },
}

/// Splits `https://HOST:PORT` (IPv6 hosts in brackets).
pub fn parse_endpoint(endpoint: &str) -> Result<(String, u16), ClientError> {
    let bad = || ClientError::Endpoint(endpoint.to_string());
    let rest = endpoint.strip_prefix("https://").ok_or_else(bad)?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

fn connect_error(target: &str, e: impl std::fmt::Display) -> ClientError {
    // tonic's transport error says only "transport error"; the cause is in the source chain.
    ClientError::Connect {
        target: target.to_string(),
        msg: e.to_string(),
    }
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Opens a channel to `target`.
pub async fn channel(target: &Target) -> Result<Channel, ClientError> {
    match target {
        Target::Unix(path) => unix_channel(path).await,
        Target::Tls {
            endpoint,
            ca,
            identity,
        } => {
            let (host, port) = parse_endpoint(endpoint)?;
            let cfg = Arc::new(tls::client_config(
                ca,
                identity.as_ref().map(|(c, k)| (c, k)),
            )?);
            let name = ServerName::try_from(host.clone())
                .map_err(|_| ClientError::Endpoint(endpoint.clone()))?;
            let authority = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            let uri = format!("http://{authority}");
            let connector = tower::service_fn(move |_: Uri| {
                let cfg = cfg.clone();
                let name = name.clone();
                let host = host.clone();
                async move {
                    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                    let tls = tokio_rustls::TlsConnector::from(cfg)
                        .connect(name, tcp)
                        .await?;
                    Ok::<_, std::io::Error>(TokioIo::new(tls))
                }
            });
            Endpoint::try_from(uri)
                .map_err(|e| connect_error(endpoint, e))?
                .connect_with_connector(connector)
                .await
                .map_err(|e| connect_error(endpoint, chain(&e)))
        }
    }
}

async fn unix_channel(path: &Path) -> Result<Channel, ClientError> {
    let p = path.to_path_buf();
    let connector = tower::service_fn(move |_: Uri| {
        let p = p.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?)) }
    });
    // The authority is a placeholder: the connector decides where to go.
    Endpoint::from_static("http://localhost")
        .connect_with_connector(connector)
        .await
        .map_err(|e| connect_error(&path.display().to_string(), chain(&e)))
}

/// One client per service, over one connection.
#[derive(Debug, Clone)]
pub struct Client {
    pub system: SystemClient<Channel>,
    pub workers: WorkersClient<Channel>,
    pub placement: PlacementClient<Channel>,
    pub stats: StatsClient<Channel>,
    pub handlers: HandlersClient<Channel>,
    pub lb: LbClient<Channel>,
}

impl Client {
    pub async fn connect(target: &Target) -> Result<Client, ClientError> {
        let ch = channel(target).await?;
        Ok(Client {
            system: SystemClient::new(ch.clone()),
            workers: WorkersClient::new(ch.clone()),
            placement: PlacementClient::new(ch.clone()),
            stats: StatsClient::new(ch.clone()),
            handlers: HandlersClient::new(ch.clone()),
            lb: LbClient::new(ch),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("https://127.0.0.1:50051").unwrap(),
            ("127.0.0.1".into(), 50051)
        );
        assert_eq!(
            parse_endpoint("https://[::1]:7/").unwrap(),
            ("::1".into(), 7)
        );
        assert_eq!(
            parse_endpoint("https://ctl.example:443").unwrap().0,
            "ctl.example"
        );
        for bad in [
            "http://a:1",
            "https://a",
            "https://:1",
            "https://a:x",
            "a:1",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }
}
