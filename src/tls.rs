//! Private certificate authorities for TLS to the relay (`smtp.ca_file`) and
//! the broker (`amqp.ca_file`): each file is read once at start, checked, and
//! its certificates are trusted next to the system's roots. A file that
//! cannot be read, holds no certificate or holds a broken one stops the start
//! (exit 2) instead of leaving a connection that can never verify.

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The certificates of one `*.ca_file`, checked.
#[derive(Clone)]
pub struct CaFile {
    path: String,
    pem: String,
}

impl std::fmt::Debug for CaFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaFile").field("path", &self.path).finish()
    }
}

impl CaFile {
    /// Reads `path` (the setting `key`, named in every error): PEM text with
    /// at least one `CERTIFICATE`, each one usable as a trust anchor.
    pub fn load(key: &str, path: &str) -> Result<Self, String> {
        let what = "set it to a PEM file with the CA certificate(s) that signed the server's certificate, or leave it empty to trust the system's roots only";
        let pem = std::fs::read_to_string(path)
            .map_err(|e| format!("{key}: cannot read {path}: {e}; {what}"))?;
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{key}: {path} is not valid PEM ({e}); {what}"))?;
        if certs.is_empty() {
            return Err(format!(
                "{key}: {path} holds no certificate (no -----BEGIN CERTIFICATE----- block); {what}"
            ));
        }
        let mut roots = rustls::RootCertStore::empty();
        for (i, cert) in certs.into_iter().enumerate() {
            roots.add(cert).map_err(|e| {
                format!(
                    "{key}: certificate {} in {path} cannot be used as a CA ({e}); {what}",
                    i + 1
                )
            })?;
        }
        Ok(Self {
            path: path.to_owned(),
            pem,
        })
    }

    /// Loads `path` when it is set; empty: `None` (the system's roots only).
    pub fn load_optional(key: &str, path: &str) -> Result<Option<Self>, String> {
        if path.is_empty() {
            Ok(None)
        } else {
            Self::load(key, path).map(Some)
        }
    }

    /// The file's text (PEM), as read at start.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Where it was read from.
    pub fn path(&self) -> &str {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_empty_or_broken_file_is_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = CaFile::load("smtp.ca_file", missing.to_str().unwrap()).unwrap_err();
        assert!(
            e.starts_with("smtp.ca_file: cannot read") && e.contains("nope.pem"),
            "{e}"
        );

        let key_only = dir.path().join("key.pem");
        std::fs::write(
            &key_only,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = CaFile::load("amqp.ca_file", key_only.to_str().unwrap()).unwrap_err();
        assert!(
            e.contains("amqp.ca_file") && e.contains("no certificate"),
            "{e}"
        );

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = CaFile::load("smtp.ca_file", garbage.to_str().unwrap()).unwrap_err();
        assert!(e.contains("cannot be used as a CA"), "{e}");

        assert!(CaFile::load_optional("smtp.ca_file", "").unwrap().is_none());
    }

    #[test]
    fn a_ca_certificate_loads() {
        let dir = tempfile::tempdir().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, ca.pem()).unwrap();
        let f = CaFile::load("smtp.ca_file", path.to_str().unwrap()).unwrap();
        assert_eq!(f.pem(), ca.pem());
    }
}
