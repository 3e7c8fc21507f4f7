//! [`Tls`]: connecting to the brokers over TLS (issue #18) with rustls (ring provider, no
//! OpenSSL): the CA certificates to trust and, for mutual TLS, the client's certificate.
//!
//! The library takes PEM bytes, not file names, so it reads no file of its own; only when
//! no CA is given does it read the operating system's trust store (rustls-native-certs).
//! The server name checked against the broker's certificate is the host of the address
//! connected to (an IP address or a DNS name), for the bootstrap address and for every
//! address metadata advertises.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::RootCertStore;

use crate::error::{Error, Result};

/// How a [`crate::Client`] speaks TLS. Cheap to clone (the configuration is shared).
///
/// ```no_run
/// # fn example() -> wharf_client::Result<()> {
/// use wharf_client::{ClientConfig, Tls};
///
/// let ca = std::fs::read("ca.pem").expect("the CA file");
/// let config = ClientConfig::new("broker.internal:7421").tls(Tls::new(Some(&ca), None)?);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Tls {
    connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Tls").finish_non_exhaustive()
    }
}

/// A client certificate for mutual TLS: the PEM certificate chain (leaf first) and its PEM
/// private key.
#[derive(Debug, Clone, Copy)]
pub struct ClientCertificate<'a> {
    /// The certificate chain, PEM.
    pub cert_pem: &'a [u8],
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: &'a [u8],
}

impl Tls {
    /// Trusts the CA certificates in `ca_pem` (`None`: the operating system's trust store)
    /// and presents `client_certificate`, if given, to brokers that ask for one.
    ///
    /// # Errors
    /// [`Error::TlsConfig`] if a PEM text holds no certificate or key, the key does not
    /// match the certificate, or no trusted CA could be found.
    pub fn new(
        ca_pem: Option<&[u8]>,
        client_certificate: Option<ClientCertificate<'_>>,
    ) -> Result<Tls> {
        let roots = match ca_pem {
            Some(pem) => roots_from_pem(pem)?,
            None => system_roots()?,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(rustls::DEFAULT_VERSIONS)
            .map_err(config_error)?
            .with_root_certificates(roots);
        let config = match client_certificate {
            None => builder.with_no_client_auth(),
            Some(certificate) => {
                let chain = certificates(certificate.cert_pem, "client certificate")?;
                let key = PrivateKeyDer::from_pem_slice(certificate.key_pem).map_err(|error| {
                    Error::TlsConfig {
                        reason: format!("client key: {error}"),
                    }
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(config_error)?
            }
        };
        Ok(Tls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// Runs the client side of the handshake with the broker at `address` (`host:port`).
    pub(crate) async fn connect<S>(
        &self,
        address: &str,
        stream: S,
    ) -> Result<tokio_rustls::client::TlsStream<S>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let host = host_of(address);
        let server_name = ServerName::try_from(host.to_string()).map_err(|_| Error::TlsConfig {
            reason: format!(
                "{host:?} (of broker address {address}) is not a DNS name or IP address"
            ),
        })?;
        self.connector
            .connect(server_name, stream)
            .await
            .map_err(|error| io_error(address, error))
    }
}

/// The error of a failed read or write on a (possibly TLS) connection: a TLS failure
/// (a certificate not trusted, a refused client certificate, a peer that does not speak
/// TLS) is [`Error::TlsHandshake`], which no retry cures; the rest is [`Error::Io`].
pub(crate) fn io_error(address: &str, error: std::io::Error) -> Error {
    let tls_failure = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .map(|failure| match failure {
            // What a plaintext listener's answer (a Wharf frame) looks like to TLS.
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => {
                format!("{failure}: the broker's listener does not seem to speak TLS")
            }
            other => other.to_string(),
        });
    match tls_failure {
        Some(reason) => Error::TlsHandshake {
            address: address.to_string(),
            reason,
        },
        None => Error::Io {
            address: address.to_string(),
            source: Arc::new(error),
        },
    }
}

/// `host` of `host:port`, without the brackets of an IPv6 address.
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.strip_prefix('[')
        .and_then(|host| host.strip_suffix(']'))
        .unwrap_or(host)
}

fn config_error(error: rustls::Error) -> Error {
    Error::TlsConfig {
        reason: error.to_string(),
    }
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|error| Error::TlsConfig {
            reason: format!("{what}: {error}"),
        })?;
    if certificates.is_empty() {
        return Err(Error::TlsConfig {
            reason: format!("{what}: no PEM certificate (-----BEGIN CERTIFICATE-----)"),
        });
    }
    Ok(certificates)
}

fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(pem, "CA")? {
        roots.add(certificate).map_err(|error| Error::TlsConfig {
            reason: format!("CA: {error}"),
        })?;
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none found".to_string(), ToString::to_string);
        return Err(Error::TlsConfig {
            reason: format!(
                "no CA certificate in the system trust store ({why}); give the broker's CA (--ca FILE)"
            ),
        });
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_is_the_host_of_the_address() {
        assert_eq!(host_of("127.0.0.1:7420"), "127.0.0.1");
        assert_eq!(host_of("broker.internal:7421"), "broker.internal");
        assert_eq!(host_of("[::1]:7420"), "::1");
    }

    #[test]
    fn pem_without_a_certificate_is_refused() {
        let error = Tls::new(Some(b"not pem"), None).expect_err("no certificate");
        assert_eq!(error.kind(), "tls_config");
        assert!(error.to_string().contains("no PEM certificate"), "{error}");
    }
}
