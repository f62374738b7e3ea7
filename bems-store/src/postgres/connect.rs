//! How a connection is made: TLS and where the password comes from.
//!
//! The connection string is libpq's: `sslmode` (`disable`, `prefer`,
//! `require`, `verify-ca`, `verify-full`) and `sslrootcert` (a PEM file
//! of the certificate authorities to trust) are read here, the rest by
//! `tokio-postgres`. Unlike libpq, every mode but `disable` verifies the
//! server's certificate chain *and* its name: a connection that is
//! encrypted to a server nobody checked protects nothing, and an IAM token
//! is a credential. `prefer` (the default) still connects in the clear to
//! a server that offers no TLS, as libpq does, so a local server without
//! certificates works unchanged; `require` and stronger refuse it. A
//! server that offers TLS with a certificate no given root signs (a
//! distribution's self-signed "snakeoil" one) is refused even under
//! `prefer`: give its CA as `sslrootcert`, or `sslmode=disable`.
//!
//! The roots are the `sslrootcert` file when given (the RDS CA bundle for
//! a direct connection to RDS or Aurora), else the platform's store
//! (enough for RDS Proxy, whose certificates chain to Amazon's public
//! roots).
//!
//! A password may come from the connection string, or from a
//! [`PasswordSource`] asked again for every new connection (an RDS IAM
//! token, [`super::iam`]); such a password travels only over TLS.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use futures_util::future::BoxFuture;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::ConfigError;

/// An error a [`PasswordSource`] returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where each new connection's password comes from.
pub trait PasswordSource: fmt::Debug + Send + Sync {
    /// The password for `user` at `host:port`.
    fn password<'a>(&'a self, host: &'a str, port: u16, user: &'a str) -> BoxFuture<'a, Result<String, BoxError>>;
}

/// libpq's `sslmode`, as this crate applies it (see the module's text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS, verified, when the server offers it; in the clear otherwise.
    Prefer,
    /// TLS, verified (`require`, `verify-ca` and `verify-full` alike).
    Require,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, ConfigError> {
        match value {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" | "verify-ca" | "verify-full" => Ok(SslMode::Require),
            other => Err(ConfigError::Tls(format!(
                "sslmode {other:?} is not one of disable, prefer, require, verify-ca, verify-full"
            ))),
        }
    }

    fn driver(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require => tokio_postgres::config::SslMode::Require,
        }
    }
}

/// The TLS part of a connection string, taken out of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsParams {
    pub(crate) mode: SslMode,
    pub(crate) root_cert: Option<PathBuf>,
}

/// `url` without its `sslmode` and `sslrootcert` (which `tokio-postgres`
/// would refuse or read differently), and what they said. Both forms of
/// connection string: `postgres://…?a=b&c=d` and `a=b c=d`.
pub(crate) fn take_tls_params(url: &str) -> Result<(String, TlsParams), ConfigError> {
    let mut params = TlsParams { mode: SslMode::Prefer, root_cert: None };
    let mut take = |key: &str, value: &str| -> Result<bool, ConfigError> {
        match key {
            "sslmode" => params.mode = SslMode::parse(value)?,
            "sslrootcert" => params.root_cert = Some(PathBuf::from(value)),
            _ => return Ok(false),
        }
        Ok(true)
    };
    let rest = if let Some((base, query)) =
        url.split_once('?').filter(|(base, _)| base.starts_with("postgres://") || base.starts_with("postgresql://"))
    {
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
            if !take(key, &value)? {
                kept.push(pair);
            }
        }
        if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) }
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        url.to_owned()
    } else {
        // key=value pairs separated by spaces; a quoted value keeps its
        // spaces, which only these two keys' values are checked for.
        let mut kept = Vec::new();
        for word in url.split_whitespace() {
            match word.split_once('=') {
                Some((key, value)) if take(key, value.trim_matches('\''))? => {}
                _ => kept.push(word),
            }
        }
        kept.join(" ")
    };
    Ok((rest, params))
}

/// The connector for `params`: `None` for `disable`.
pub(crate) fn connector(params: &TlsParams) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>, ConfigError> {
    if params.mode == SslMode::Disable {
        return Ok(None);
    }
    let roots = match &params.root_cert {
        Some(path) => Arc::new(roots_from_file(path)?),
        None => system_roots()?,
    };
    // The provider named, not the process default: a binary that links
    // both of rustls's providers has no default.
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Tls(format!("TLS configuration: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
}

/// The driver's `sslmode` for ours.
pub(crate) fn driver_mode(params: &TlsParams) -> tokio_postgres::config::SslMode {
    params.mode.driver()
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, ConfigError> {
    let bad = |why: String| ConfigError::Tls(format!("sslrootcert {}: {why}", path.display()));
    let mut roots = RootCertStore::empty();
    let certificates = CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))?;
    for certificate in certificates {
        let certificate = certificate.map_err(|e| bad(e.to_string()))?;
        roots.add(certificate).map_err(|e| bad(format!("a certificate does not parse: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad("holds no certificate".into()));
    }
    Ok(roots)
}

/// The platform's roots, read once per process.
fn system_roots() -> Result<Arc<RootCertStore>, ConfigError> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
                Err(format!(
                    "the platform's certificate store is empty ({}); give sslrootcert=<PEM file> or sslmode=disable",
                    errors.join("; ")
                ))
            } else {
                Ok(Arc::new(roots))
            }
        })
        .clone()
        .map_err(ConfigError::Tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls_parameters_are_taken_out_of_either_form() {
        let (rest, params) = take_tls_params(
            "postgres://w@db:5432/bems?sslmode=verify-full&sslrootcert=%2Fopt%2Fca.pem&application_name=x",
        )
        .expect("url");
        assert_eq!(rest, "postgres://w@db:5432/bems?application_name=x");
        assert_eq!(params, TlsParams { mode: SslMode::Require, root_cert: Some("/opt/ca.pem".into()) });
        let (rest, params) = take_tls_params("postgres://w@db/bems?sslmode=disable").expect("url");
        assert_eq!((rest.as_str(), params.mode), ("postgres://w@db/bems", SslMode::Disable));
        let (rest, params) = take_tls_params("host=db user=w sslmode=require sslrootcert=/ca.pem").expect("kv");
        assert_eq!(rest, "host=db user=w");
        assert_eq!(params.root_cert.as_deref(), Some(Path::new("/ca.pem")));
        let (_, params) = take_tls_params("postgres://w@db/bems").expect("default");
        assert_eq!(params, TlsParams { mode: SslMode::Prefer, root_cert: None });
        let error = take_tls_params("postgres://w@db/bems?sslmode=allow").expect_err("allow");
        assert!(error.to_string().contains("sslmode \"allow\""), "{error}");
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_named() {
        let missing = TlsParams { mode: SslMode::Require, root_cert: Some("/nonexistent/ca.pem".into()) };
        let error = connector(&missing).err().expect("missing file");
        assert!(error.to_string().contains("sslrootcert /nonexistent/ca.pem"), "{error}");
        let empty = std::env::temp_dir().join(format!("bems-empty-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let error =
            connector(&TlsParams { mode: SslMode::Require, root_cert: Some(empty.clone()) }).err().expect("empty");
        assert!(error.to_string().contains("holds no certificate"), "{error}");
        let _ = std::fs::remove_file(empty);
        assert!(connector(&TlsParams { mode: SslMode::Disable, root_cert: None }).expect("disable").is_none());
    }
}
