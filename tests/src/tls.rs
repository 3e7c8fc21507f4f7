//! Certificates for the TLS tests (issue #18), made with rcgen in the test: a CA, server
//! certificates for `127.0.0.1` and `localhost` signed by it, and a client certificate for
//! mutual TLS, written as PEM files into a directory the test owns.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SerialNumber,
};

/// A test certificate authority and the files of what it signed.
pub struct TestPki {
    dir: PathBuf,
    ca: Certificate,
    ca_key: KeyPair,
    /// The CA certificate, PEM file: what clients trust.
    pub ca_path: PathBuf,
    /// The broker's certificate chain, PEM file (`--tls-cert`).
    pub server_cert_path: PathBuf,
    /// The broker's key, PEM file (`--tls-key`).
    pub server_key_path: PathBuf,
    /// A client certificate for mutual TLS, PEM file (`--cert`).
    pub client_cert_path: PathBuf,
    /// Its key, PEM file (`--key`).
    pub client_key_path: PathBuf,
    /// The DER bytes of the server certificate now in `server_cert_path`.
    pub server_cert_der: Vec<u8>,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TestPki")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// A server or client certificate with its key.
#[derive(Debug)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its key, PEM.
    pub key_pem: String,
    /// The certificate, DER (what a TLS peer sees).
    pub cert_der: Vec<u8>,
}

impl TestPki {
    /// A new CA named `name` (its common name), with a server certificate (serial 1) and a
    /// client certificate, all written under `dir`.
    ///
    /// # Panics
    /// If rcgen cannot make the certificates or the files cannot be written.
    pub fn create(dir: &Path, name: &str) -> TestPki {
        std::fs::create_dir_all(dir).expect("creating the certificates' directory");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = params.self_signed(&ca_key).expect("self-signed CA");
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).expect("writing the CA");
        let mut pki = TestPki {
            dir: dir.to_path_buf(),
            ca,
            ca_key,
            ca_path,
            server_cert_path: dir.join("server.pem"),
            server_key_path: dir.join("server.key"),
            client_cert_path: dir.join("client.pem"),
            client_key_path: dir.join("client.key"),
            server_cert_der: Vec::new(),
        };
        let server = pki.issue_server(1);
        pki.install_server(&server);
        let client = pki.issue(
            "wharf-test-client",
            &[],
            &[ExtendedKeyUsagePurpose::ClientAuth],
            2,
        );
        std::fs::write(&pki.client_cert_path, &client.cert_pem).expect("writing");
        std::fs::write(&pki.client_key_path, &client.key_pem).expect("writing");
        pki
    }

    /// A server certificate for `127.0.0.1` and `localhost` with serial `serial`.
    pub fn issue_server(&self, serial: u64) -> Issued {
        self.issue(
            &format!("wharf-test-server-{serial}"),
            &["127.0.0.1", "localhost"],
            &[ExtendedKeyUsagePurpose::ServerAuth],
            serial,
        )
    }

    /// A cluster node's certificate for `127.0.0.1` and `localhost`, for server and client
    /// use (a node listens for the others and dials them), with serial `serial`, written as
    /// `node-SERIAL.pem` and `node-SERIAL.key` in the directory; returns their paths.
    pub fn node_files(&self, serial: u64) -> (PathBuf, PathBuf) {
        let node = self.issue(
            &format!("wharf-test-node-{serial}"),
            &["127.0.0.1", "localhost"],
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            serial,
        );
        let cert = self.dir.join(format!("node-{serial}.pem"));
        let key = self.dir.join(format!("node-{serial}.key"));
        std::fs::write(&cert, &node.cert_pem).expect("writing");
        std::fs::write(&key, &node.key_pem).expect("writing");
        (cert, key)
    }

    /// Writes `server` over the broker's certificate and key files (a renewal).
    pub fn install_server(&mut self, server: &Issued) {
        std::fs::write(&self.server_cert_path, &server.cert_pem).expect("writing");
        std::fs::write(&self.server_key_path, &server.key_pem).expect("writing");
        self.server_cert_der = server.cert_der.clone();
    }

    /// `wharfd`'s flags for this server certificate.
    pub fn wharfd_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".to_string(),
            self.server_cert_path.display().to_string(),
            "--tls-key".to_string(),
            self.server_key_path.display().to_string(),
        ]
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn issue(
        &self,
        common_name: &str,
        names: &[&str],
        usages: &[ExtendedKeyUsagePurpose],
        serial: u64,
    ) -> Issued {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(ToString::to_string).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = usages.to_vec();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(SerialNumber::from(serial));
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("signed by the CA");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
        }
    }
}
