//! TLS of the HTTP cluster providers (Nutanix, OpenStack, vSphere): the configured
//! CA bundle, and telling a refused certificate from a network failure.

use std::path::{Path, PathBuf};

/// A `ca_bundle` that cannot be used: reported when the provider is built,
/// not as a certificate error at the first request.
#[derive(Debug, thiserror::Error)]
pub enum CaBundleError {
    #[error("ca_bundle {}: cannot read it: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ca_bundle {}: not a PEM file: {reason}", .path.display())]
    NotPem { path: PathBuf, reason: String },
    #[error("ca_bundle {}: a certificate in it cannot be used: {reason}", .path.display())]
    BadCertificate { path: PathBuf, reason: String },
    /// Without this check a file of anything but PEM blocks gives no roots
    /// at all, and every request fails with "unknown issuer".
    #[error("ca_bundle {}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)", .path.display())]
    NoCertificate { path: PathBuf },
}

/// The HTTP client builder the OpenStack and vSphere clients share: the
/// connect timeout (`request_secs`, 1 to 30 s), our user agent, and the
/// configured certificate checking (off, or the CA bundle besides the system's).
pub fn client_builder(
    request_secs: u64,
    verify_tls: bool,
    ca_bundle: Option<&Path>,
) -> Result<reqwest::ClientBuilder, CaBundleError> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(request_secs.clamp(1, 30)))
        .user_agent(concat!("vmscan/", env!("CARGO_PKG_VERSION")));
    if !verify_tls {
        b = b.danger_accept_invalid_certs(true);
    }
    match ca_bundle {
        Some(path) => add_ca_bundle(b, path),
        None => Ok(b),
    }
}

/// Trusts the certificates of the PEM file `path` (besides the system's).
pub fn add_ca_bundle(
    mut builder: reqwest::ClientBuilder,
    path: &Path,
) -> Result<reqwest::ClientBuilder, CaBundleError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let pem = std::fs::read(path).map_err(|source| CaBundleError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    // Parsed here so that a bad bundle names its path; reqwest would only
    // fail when the client is built, or not at all.
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| CaBundleError::NotPem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        roots
            .add(cert.clone())
            .map_err(|e| CaBundleError::BadCertificate {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        let cert =
            reqwest::Certificate::from_der(&cert).map_err(|e| CaBundleError::BadCertificate {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        builder = builder.add_root_certificate(cert);
    }
    if roots.is_empty() {
        return Err(CaBundleError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(builder)
}

/// Whether the server's certificate was refused (unknown issuer, wrong
/// name, expired…): no retry can help, only `ca_bundle` or `verify_tls`.
pub fn certificate_rejected(e: &reqwest::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if matches!(
            c.downcast_ref::<rustls::Error>(),
            Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
        ) {
            return true;
        }
        // The connectors wrap rustls' error in io::Errors (nested twice),
        // whose source() skips the wrapped error: look inside instead.
        cause = match c.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => c.source(),
        };
    }
    false
}

/// What to tell the user along with a refused certificate.
pub const CERTIFICATE_HINT: &str = "set ca_bundle to the CA that signed it, or verify_tls = false";
