//! The double's cluster CA and serving certificate (rcgen), laid out on disk as K3s does.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use time::OffsetDateTime;

/// The cluster CA: certificate PEM exactly as stored (and served on /cacerts) plus its key.
pub struct ClusterCa {
    /// `server-ca.crt` bytes.
    pub cert_pem: String,
    /// `server-ca.key` bytes.
    pub key_pem: String,
}

impl ClusterCa {
    /// A fresh self-signed CA named like K3s's (`k3s-server-ca@<unix time>`), valid from this
    /// process's clock now for ten years, as K3s v1.31's (rancher/dynamiclistener v0.6.0-rc1
    /// cert/cert.go:75-100 NewSelfSignedCACert: `NotBefore: now.UTC()`, no backdating,
    /// `NotAfter: now.Add(duration365d * 10)`). A node whose clock is behind this fails the
    /// TLS check ("certificate is not valid yet"), as on real K3s (k3s issues 6368, 411).
    pub fn generate() -> Result<Self> {
        let key = KeyPair::generate().context("generating the CA key")?;
        let mut params = CertificateParams::default();
        let now = unix_now();
        params.not_before = OffsetDateTime::from_unix_timestamp(now).context("the clock")?;
        params.not_after =
            OffsetDateTime::from_unix_timestamp(now + TEN_YEARS).context("the clock")?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("k3s-server-ca@{now}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).context("self-signing the CA")?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Reads `server-ca.crt` and `server-ca.key` from `tls_dir`, if both exist.
    pub fn load(tls_dir: &Path) -> Result<Option<Self>> {
        let crt = tls_dir.join("server-ca.crt");
        let key = tls_dir.join("server-ca.key");
        if !crt.exists() || !key.exists() {
            return Ok(None);
        }
        Ok(Some(ClusterCa {
            cert_pem: std::fs::read_to_string(&crt).context("reading server-ca.crt")?,
            key_pem: std::fs::read_to_string(&key).context("reading server-ca.key")?,
        }))
    }

    /// Writes `server-ca.crt` (0644) and `server-ca.key` (0600) into `tls_dir`.
    pub fn store(&self, tls_dir: &Path) -> Result<()> {
        std::fs::create_dir_all(tls_dir).context("creating server/tls")?;
        write_mode(
            &tls_dir.join("server-ca.crt"),
            self.cert_pem.as_bytes(),
            0o644,
        )?;
        write_mode(
            &tls_dir.join("server-ca.key"),
            self.key_pem.as_bytes(),
            0o600,
        )
    }

    /// A serving certificate for this node, signed by the CA; the chain is [leaf, CA] in DER,
    /// the key PKCS#8 DER.
    pub fn serving_cert(
        &self,
        ips: &[IpAddr],
        names: &[String],
    ) -> Result<(Vec<Vec<u8>>, Vec<u8>)> {
        let ca_key = KeyPair::from_pem(&self.key_pem).context("parsing the CA key")?;
        let ca_params = CertificateParams::from_ca_cert_pem(&self.cert_pem)
            .context("parsing the CA certificate")?;
        let ca_not_before = ca_params.not_before;
        let issuer: Certificate = ca_params
            .self_signed(&ca_key)
            .context("rebuilding the CA as issuer")?;
        let ca_der = rustls::pki_types::pem::PemObject::from_pem_slice(self.cert_pem.as_bytes())
            .map(|c: rustls::pki_types::CertificateDer<'static>| c.to_vec())
            .context("decoding the CA PEM")?;
        let key = KeyPair::generate().context("generating the serving key")?;
        let mut params = CertificateParams::default();
        // Leaves copy the CA's NotBefore and last a year from now (dynamiclistener v0.6.0-rc1
        // cert/cert.go:136 NewSignedCert: `NotBefore: caCert.NotBefore`,
        // `NotAfter: time.Now().Add(duration365d)`).
        params.not_before = ca_not_before;
        params.not_after =
            OffsetDateTime::from_unix_timestamp(unix_now() + YEAR).context("the clock")?;
        params.distinguished_name.push(DnType::CommonName, "k3s");
        for ip in ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        for n in names {
            params.subject_alt_names.push(SanType::DnsName(
                n.clone().try_into().context("a tls-san name")?,
            ));
        }
        let cert = params
            .signed_by(&key, &issuer, &ca_key)
            .context("signing the serving certificate")?;
        Ok((vec![cert.der().to_vec(), ca_der], key.serialize_der()))
    }
}

impl ClusterCa {
    /// The admin client certificate of the kubeconfig K3s writes: `CN=system:admin`,
    /// `O=system:masters`, client authentication (K3s v1.31.4 pkg/daemons/control/deps/deps.go
    /// genClientCerts, `certGen(..., "system:admin", []string{user.SystemPrivilegedGroup}, ...)`).
    /// K3s signs it with its client CA; the double has one CA for serving and clients.
    /// Returns (certificate PEM, key PEM).
    pub fn admin_client_cert(&self) -> Result<(String, String)> {
        let ca_key = KeyPair::from_pem(&self.key_pem).context("parsing the CA key")?;
        let ca_params = CertificateParams::from_ca_cert_pem(&self.cert_pem)
            .context("parsing the CA certificate")?;
        let not_before = ca_params.not_before;
        let issuer = ca_params
            .self_signed(&ca_key)
            .context("rebuilding the CA as issuer")?;
        let key = KeyPair::generate().context("generating the admin key")?;
        let mut params = CertificateParams::default();
        params.not_before = not_before;
        params.not_after =
            OffsetDateTime::from_unix_timestamp(unix_now() + YEAR).context("the clock")?;
        params
            .distinguished_name
            .push(DnType::CommonName, "system:admin");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&key, &issuer, &ca_key)
            .context("signing the admin certificate")?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Whether a client certificate (DER) is in the group `system:masters` (its Organization), as
/// kube-apiserver's x509 authenticator maps O to groups.
pub fn is_system_master(der: &[u8]) -> bool {
    let Ok(params) = CertificateParams::from_ca_cert_der(&der.to_vec().into()) else {
        return false;
    };
    params
        .distinguished_name
        .iter()
        .any(|(t, v)| *t == DnType::OrganizationName && dn_text(v) == "system:masters")
}

fn dn_text(v: &rcgen::DnValue) -> &str {
    match v {
        rcgen::DnValue::Utf8String(s) => s,
        rcgen::DnValue::PrintableString(s) => s.as_ref(),
        _ => "",
    }
}

const YEAR: i64 = 365 * 24 * 3600;
const TEN_YEARS: i64 = 10 * YEAR;

/// Unix seconds on this process's wall clock (a machine's fake clock included).
pub fn unix_now() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// Writes a file with exact permission bits.
pub fn write_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}
