//! Minimal HTTPS for the double: a server for /ping, /cacerts and two authenticated paths, and a GET client.

use anyhow::{anyhow, bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A parsed request: path and the password from `Authorization: Basic user:password`.
pub struct Request {
    /// Request path.
    pub path: String,
    /// Password part of basic auth, if any.
    pub password: Option<String>,
}

/// A response: status code and body.
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// Serves HTTPS on `listener` forever, answering each request with `route`.
pub async fn serve<F>(
    listener: TcpListener,
    chain: Vec<Vec<u8>>,
    key: Vec<u8>,
    route: Arc<F>,
) -> Result<()>
where
    F: Fn(&Request) -> Response + Send + Sync + 'static,
{
    let certs: Vec<CertificateDer<'static>> = chain.into_iter().map(CertificateDer::from).collect();
    let key = PrivateKeyDer::Pkcs8(key.into());
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("building the TLS server config")?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    loop {
        let (tcp, _) = listener.accept().await.context("accepting")?;
        let acceptor = acceptor.clone();
        let route = route.clone();
        tokio::spawn(async move {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            let Ok(head) = read_head(&mut tls).await else {
                return;
            };
            let resp = match parse_request(&head) {
                Some(req) => route(&req),
                None => Response {
                    status: 400,
                    body: b"bad request".to_vec(),
                },
            };
            let reason = match resp.status {
                200 => "OK",
                401 => "Unauthorized",
                404 => "Not Found",
                _ => "Error",
            };
            let mut out = format!(
                "HTTP/1.1 {} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                resp.status,
                resp.body.len()
            )
            .into_bytes();
            out.extend_from_slice(&resp.body);
            let _ = tls.write_all(&out).await;
            let _ = tls.shutdown().await;
        });
    }
}

async fn read_head<S: AsyncReadExt + Unpin>(s: &mut S) -> Result<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk).await?;
        if n == 0 || buf.len() > 16 * 1024 {
            bail!("incomplete request");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn parse_request(head: &str) -> Option<Request> {
    use base64::Engine;
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    if first.next()? != "GET" {
        return None;
    }
    let path = first.next()?.to_string();
    let password = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .and_then(|(_, v)| v.trim().strip_prefix("Basic ").map(str::to_string))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|up| up.split_once(':').map(|(_, p)| p.to_string()));
    Some(Request { path, password })
}

/// How the client checks the server.
pub enum Trust {
    /// No verification: only for fetching /cacerts, whose hash is checked afterwards (as K3s does).
    Nothing,
    /// Verify against this CA bundle (PEM).
    Ca(Vec<u8>),
}

/// GETs `path` from `server_url` (`https://host:port`), with basic auth when `auth` is given.
pub async fn get(
    server_url: &str,
    path: &str,
    trust: Trust,
    auth: Option<(&str, &str)>,
) -> Result<(u16, Vec<u8>)> {
    use base64::Engine;
    use rustls::pki_types::pem::PemObject;
    let authority = server_url
        .strip_prefix("https://")
        .ok_or_else(|| anyhow!("server URL {server_url} is not https://host[:port]"))?
        .trim_end_matches('/');
    // Go's url/http: a URL without a port means the scheme's, 443 for https (K3s passes the
    // server URL to net/http unchanged, pkg/clientaccess/token.go).
    let has_port = match authority.rsplit_once(':') {
        Some((h, p)) => !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) && !h.ends_with('['),
        None => false,
    } && !authority.ends_with(']');
    let host_port = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:443")
    };
    let host_port = host_port.as_str();
    let (host, _) = host_port
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("server URL {server_url} has no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let config = match trust {
        Trust::Nothing => rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnything))
            .with_no_client_auth(),
        Trust::Ca(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&pem) {
                roots.add(c.context("decoding the CA bundle")?)?;
            }
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth()
        }
    };
    let name = ServerName::try_from(host.clone()).context("server host name")?;
    let tcp = TcpStream::connect(host_port)
        .await
        .with_context(|| format!("connecting to {host_port}"))?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS handshake with {host_port}"))?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host_port}\r\nConnection: close\r\n");
    if let Some((user, password)) = auth {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        req.push_str(&format!("Authorization: Basic {b}\r\n"));
    }
    req.push_str("\r\n");
    tls.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    // A peer that closes without close_notify still sent a complete, length-delimited answer.
    if let Err(e) = tls.read_to_end(&mut raw).await {
        if raw.is_empty() {
            return Err(e.into());
        }
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP header from {host_port}"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line from {host_port}"))?;
    Ok((status, raw[split + 4..].to_vec()))
}

#[derive(Debug)]
struct AcceptAnything;

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
