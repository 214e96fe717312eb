//! The TLS files of `[oslo_messaging_rabbit]`, checked before any
//! connection: the TLS library only reads them at the handshake, and a
//! wrong file there fails every attempt with an error naming no option (a
//! CA file holding no certificate is even ignored: the system's roots are
//! used).

use std::path::{Path, PathBuf};

use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    sign::CertifiedKey,
};

use crate::rpc::Tls;

/// What is wrong with one of the files: the option (`ssl_ca_file`,
/// `ssl_cert_file`, `ssl_key_file`), its file, and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {}{what}", file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default())]
pub struct TlsProblem {
    pub key: &'static str,
    pub file: Option<PathBuf>,
    pub what: String,
}

fn problem(key: &'static str, file: &Path, what: impl std::fmt::Display) -> TlsProblem {
    TlsProblem {
        key,
        file: Some(file.to_path_buf()),
        what: what.to_string(),
    }
}

/// Option `set` given without option `missing`.
fn alone(set: &'static str, missing: &'static str) -> TlsProblem {
    TlsProblem {
        key: set,
        file: None,
        what: format!("is set without {missing}: a client certificate and its key go together"),
    }
}

/// The certificates of PEM file `file`, at least one.
fn certificates(
    key: &'static str,
    file: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsProblem> {
    let text = std::fs::read(file).map_err(|e| problem(key, file, e))?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem(key, file, format!("is not a PEM file ({e})")))?;
    if certs.is_empty() {
        return Err(problem(
            key,
            file,
            "holds no certificate (no \"BEGIN CERTIFICATE\" block)",
        ));
    }
    Ok(certs)
}

/// Checks that the CA file holds certificates, the certificate file a
/// certificate, the key file a private key, and that the key is the
/// certificate's (and that the two come together).
pub fn check_tls(tls: &Tls) -> Result<(), TlsProblem> {
    if let Some(ca) = &tls.ca_file {
        certificates("ssl_ca_file", ca)?;
    }
    let (cert_file, key_file) = match (&tls.cert_file, &tls.key_file) {
        (Some(c), Some(k)) => (c, k),
        (None, None) => return Ok(()),
        (Some(_), None) => return Err(alone("ssl_cert_file", "ssl_key_file")),
        (None, Some(_)) => return Err(alone("ssl_key_file", "ssl_cert_file")),
    };
    let certs = certificates("ssl_cert_file", cert_file)?;
    let text = std::fs::read(key_file).map_err(|e| problem("ssl_key_file", key_file, e))?;
    let key = PrivateKeyDer::from_pem_slice(&text).map_err(|_| {
        problem(
            "ssl_key_file",
            key_file,
            "holds no private key (PKCS#8, PKCS#1 or SEC1, in PEM)",
        )
    })?;
    let signer = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| {
            problem(
                "ssl_key_file",
                key_file,
                format!("is not a usable key: {e}"),
            )
        })?;
    CertifiedKey::new(certs, signer).keys_match().map_err(|_| {
        problem(
            "ssl_key_file",
            key_file,
            "is not the key of ssl_cert_file's certificate",
        )
    })?;
    Ok(())
}
