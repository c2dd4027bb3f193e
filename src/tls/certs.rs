//! Loading one certificate chain and its private key from PEM files, the
//! same way at config load and on every reload, so a file that `tether
//! check` accepts is exactly a file the watcher accepts.
//!
//! A pair is good when the chain parses as X.509, the key is one rustls can
//! sign with, and the key matches the chain's first certificate. The names a
//! certificate answers for (its subjectAltName DNS entries, or its common
//! name when it has none) are read here for SNI selection.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Which file of a pair a problem is in, so config errors point at `cert` or `key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Cert,
    Key,
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: PathBuf,
        part: Part,
        #[source]
        source: io::Error,
    },
    #[error("`{path}` is not a PEM file: {why}")]
    Pem {
        path: PathBuf,
        part: Part,
        why: String,
    },
    #[error("`{0}` holds no certificate (expected -----BEGIN CERTIFICATE-----)")]
    NoCert(PathBuf),
    #[error("`{path}`: certificate {index} is not valid X.509: {why}")]
    BadCert {
        path: PathBuf,
        index: usize,
        why: String,
    },
    #[error("`{0}` holds no private key (expected PKCS#8, RSA or EC PEM)")]
    NoKey(PathBuf),
    #[error("`{path}`: unusable private key: {why}")]
    BadKey { path: PathBuf, why: String },
    #[error("the key in `{key}` does not match the certificate in `{cert}`")]
    Mismatch { cert: PathBuf, key: PathBuf },
}

impl CertError {
    pub fn part(&self) -> Part {
        match self {
            CertError::Read { part, .. } | CertError::Pem { part, .. } => *part,
            CertError::NoCert(_) | CertError::BadCert { .. } => Part::Cert,
            CertError::NoKey(_) | CertError::BadKey { .. } | CertError::Mismatch { .. } => {
                Part::Key
            }
        }
    }
}

/// What identifies one version of a file on disk: a replaced file (rename)
/// changes the inode, an edited one its mtime or size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    mtime: Option<SystemTime>,
    len: u64,
    ino: u64,
}

impl FileStamp {
    /// `None` when the file cannot be looked at (gone, no permission).
    pub fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            mtime: m.modified().ok(),
            len: m.len(),
            ino: m.ino(),
        })
    }
}

/// A loaded, validated pair.
#[derive(Clone)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// Lower-case DNS names; a wildcard is kept as `*.example.com`.
    pub names: Vec<String>,
    /// The files as they were when read (cert, key): the watcher reloads on a change.
    pub stamps: (Option<FileStamp>, Option<FileStamp>),
}

impl std::fmt::Debug for LoadedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material.
        f.debug_struct("LoadedCert")
            .field("names", &self.names)
            .finish()
    }
}

fn read(path: &Path, part: Part) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_owned(),
        part,
        source,
    })
}

/// The certificates of a PEM file, in order; each checked to be X.509.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let bytes = read(path, Part::Cert)?;
    let pem_err = |e: pem::Error| CertError::Pem {
        path: path.to_owned(),
        part: Part::Cert,
        why: e.to_string(),
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err)?;
    if certs.is_empty() {
        return Err(CertError::NoCert(path.to_owned()));
    }
    for (index, c) in certs.iter().enumerate() {
        if let Err(e) = X509Certificate::from_der(c) {
            return Err(CertError::BadCert {
                path: path.to_owned(),
                index,
                why: e.to_string(),
            });
        }
    }
    Ok(certs)
}

/// Load and check the pair `cert` + `key`.
pub fn load_pair(cert: &Path, key: &Path) -> Result<LoadedCert, CertError> {
    // Stamps first: a change while reading shows up as a difference next poll.
    let stamps = (FileStamp::of(cert), FileStamp::of(key));
    let chain = read_certs(cert)?;
    let key_bytes = read(key, Part::Key)?;
    let der = match PrivateKeyDer::from_pem_slice(&key_bytes) {
        Ok(k) => k,
        Err(pem::Error::NoItemsFound) => return Err(CertError::NoKey(key.to_owned())),
        Err(e) => {
            return Err(CertError::Pem {
                path: key.to_owned(),
                part: Part::Key,
                why: e.to_string(),
            })
        }
    };
    let names = names(&chain[0]);
    let certified = CertifiedKey::from_der(chain, der, &ring::default_provider()).map_err(|e| {
        use tokio_rustls::rustls::{Error, InconsistentKeys};
        match e {
            Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => CertError::Mismatch {
                cert: cert.to_owned(),
                key: key.to_owned(),
            },
            other => CertError::BadKey {
                path: key.to_owned(),
                why: other.to_string(),
            },
        }
    })?;
    Ok(LoadedCert {
        key: Arc::new(certified),
        names,
        stamps,
    })
}

/// The DNS names of a leaf certificate: subjectAltName DNS entries, or the
/// common name when there are none (old certificates).
fn names(leaf: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(leaf) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                out.push(d.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    if out.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                out.push(s.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    out
}
