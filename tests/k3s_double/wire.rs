//! Minimal HTTPS for the double: a server whose routes are async functions of the request, and a
//! client (GET, POST, PUT with basic auth and extra headers).

use anyhow::{anyhow, bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A parsed request.
pub struct Request {
    /// Method (GET, POST, ...).
    pub method: String,
    /// Request path (with any query).
    pub path: String,
    /// User part of basic auth, if any.
    pub user: Option<String>,
    /// Password part of basic auth, if any.
    pub password: Option<String>,
    /// Headers (names lower-cased).
    pub headers: Vec<(String, String)>,
    /// The client certificate (DER) the TLS handshake verified against the client CA, if any.
    pub client_cert: Option<Vec<u8>>,
    /// The request body.
    pub body: Vec<u8>,
}

impl Request {
    /// A header's value (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The future a route returns.
pub type RouteFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>>;

/// A response: status code and body.
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// Serves HTTPS on `listener` forever, answering each request with `route`.
///
/// Clients may present a certificate (kube-apiserver's x509 authentication, `--client-ca-file`):
/// one verified against `client_ca` (PEM) reaches the route as [`Request::client_cert`]; a client
/// without one is served as before (basic auth or anonymous).
pub async fn serve<F>(
    listener: TcpListener,
    chain: Vec<Vec<u8>>,
    key: Vec<u8>,
    client_ca: &[u8],
    route: Arc<F>,
) -> Result<()>
where
    F: Fn(Request) -> RouteFuture + Send + Sync + 'static,
{
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<CertificateDer<'static>> = chain.into_iter().map(CertificateDer::from).collect();
    let key = PrivateKeyDer::Pkcs8(key.into());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(client_ca) {
        roots.add(c.context("decoding the client CA")?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .context("building the client certificate verifier")?;
    let config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
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
            let Ok((head, body)) = read_message(&mut tls).await else {
                return;
            };
            let client_cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec());
            let resp = match parse_request(&head, body) {
                Some(mut req) => {
                    req.client_cert = client_cert;
                    route(req).await
                }
                None => Response {
                    status: 400,
                    body: b"bad request".to_vec(),
                },
            };
            let reason = match resp.status {
                200 => "OK",
                201 => "Created",
                400 => "Bad Request",
                401 => "Unauthorized",
                403 => "Forbidden",
                404 => "Not Found",
                409 => "Conflict",
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

/// Reads a request head and its Content-Length body.
async fn read_message<S: AsyncReadExt + Unpin>(s: &mut S) -> Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let split = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 || buf.len() > 16 * 1024 {
            bail!("incomplete request");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let len: usize = head
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    if len > 1 << 20 {
        bail!("request body too large");
    }
    let mut body = buf[split + 4..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("incomplete body");
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Ok((head, body))
}

fn parse_request(head: &str, body: Vec<u8>) -> Option<Request> {
    use base64::Engine;
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let creds = headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .and_then(|(_, v)| v.strip_prefix("Basic ").map(str::to_string))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|up| {
            up.split_once(':')
                .map(|(u, p)| (u.to_string(), p.to_string()))
        });
    let (user, password) = match creds {
        Some((u, p)) => (Some(u), Some(p)),
        None => (None, None),
    };
    Some(Request {
        method,
        path,
        user,
        password,
        headers,
        client_cert: None,
        body,
    })
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
    request(server_url, "GET", path, trust, auth, &[], &[]).await
}

/// Sends one request (method, path, basic auth, extra headers, body) to `server_url`.
pub async fn request(
    server_url: &str,
    method: &str,
    path: &str,
    trust: Trust,
    auth: Option<(&str, &str)>,
    headers: &[(&str, &str)],
    body: &[u8],
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
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host_port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some((user, password)) = auth {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        req.push_str(&format!("Authorization: Basic {b}\r\n"));
    }
    req.push_str("\r\n");
    let mut out = req.into_bytes();
    out.extend_from_slice(body);
    tls.write_all(&out).await?;
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
