//! SASL mechanism bytes (RFC 4422) shared by every protocol that carries them: SCRAM
//! (RFC 5802, with SHA-256 and SHA-512 as RFC 7677 and Kafka define them) and PLAIN
//! (RFC 4616). The native protocol, Kafka's SaslAuthenticate and AMQP's connection.start-ok
//! all carry these same bytes, so the broker parses them once, here.
//!
//! Pure: parsing of untrusted bytes into typed messages, encoding of the server's and the
//! client's messages, and SCRAM's computations (Hi = PBKDF2-HMAC, HMAC, H). No I/O, no
//! randomness: callers pass salts and nonces in (the broker and client take them from the
//! operating system's CSPRNG).
//!
//! **Invariants:** no parser panics or allocates more than its input on any bytes; secrets
//! are compared in constant time ([`ScramMechanism::verify_proof`]); nothing here logs.

use std::fmt;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// Fewest PBKDF2 iterations accepted for a stored credential or a server-first message:
/// RFC 7677 asks for at least 4096 (and Kafka refuses fewer).
pub const SCRAM_ITERATIONS_MIN: u32 = 4096;
/// Most PBKDF2 iterations accepted: a server-first message (or a stored credential) with more
/// would make a login cost seconds of CPU; Kafka's limit is the same.
pub const SCRAM_ITERATIONS_MAX: u32 = 16384;
/// Iterations of new credentials: RFC 7677's minimum, Kafka's default.
pub const SCRAM_ITERATIONS_DEFAULT: u32 = 4096;
/// Bytes of a new credential's salt.
pub const SCRAM_SALT_BYTES: usize = 16;
/// Longest SASL message accepted (user names, nonces and proofs are short; a longer message
/// is not a real client).
pub const SASL_MESSAGE_BYTES_MAX: usize = 4096;
/// Longest user name.
pub const USER_NAME_BYTES_MAX: usize = 255;
/// Longest password accepted by PLAIN and by user creation.
pub const PASSWORD_BYTES_MAX: usize = 1024;

/// A SCRAM hash: the `H` and `HMAC` of RFC 5802.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScramMechanism {
    /// SCRAM-SHA-256 (RFC 7677).
    Sha256,
    /// SCRAM-SHA-512 (Kafka's KIP-84).
    Sha512,
}

impl ScramMechanism {
    /// Every SCRAM mechanism, in the order servers advertise them.
    pub const ALL: [ScramMechanism; 2] = [ScramMechanism::Sha256, ScramMechanism::Sha512];

    /// The SASL mechanism name.
    pub fn name(self) -> &'static str {
        match self {
            ScramMechanism::Sha256 => "SCRAM-SHA-256",
            ScramMechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// The mechanism named `name` (exact, as SASL names are).
    pub fn from_name(name: &str) -> Option<ScramMechanism> {
        ScramMechanism::ALL
            .into_iter()
            .find(|mechanism| mechanism.name() == name)
    }

    /// Bytes of the hash's output (and of StoredKey, ServerKey, proofs, signatures).
    pub fn hash_bytes(self) -> usize {
        match self {
            ScramMechanism::Sha256 => 32,
            ScramMechanism::Sha512 => 64,
        }
    }

    /// `SaltedPassword := Hi(Normalize(password), salt, i)`.
    ///
    /// The password is used as given (SASLprep is not applied: Kafka does not apply it
    /// either, and every client here sends the bytes the user typed).
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0u8; self.hash_bytes()];
        match self {
            ScramMechanism::Sha256 => {
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out)
            }
            ScramMechanism::Sha512 => {
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out)
            }
        }
        out
    }

    /// `HMAC(key, message)`.
    pub fn hmac(self, key: &[u8], message: &[u8]) -> Vec<u8> {
        match self {
            ScramMechanism::Sha256 => {
                let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
                    .expect("HMAC accepts keys of any length");
                mac.update(message);
                mac.finalize().into_bytes().to_vec()
            }
            ScramMechanism::Sha512 => {
                let mut mac = <Hmac<Sha512> as Mac>::new_from_slice(key)
                    .expect("HMAC accepts keys of any length");
                mac.update(message);
                mac.finalize().into_bytes().to_vec()
            }
        }
    }

    /// `H(bytes)`.
    pub fn hash(self, bytes: &[u8]) -> Vec<u8> {
        match self {
            ScramMechanism::Sha256 => Sha256::digest(bytes).to_vec(),
            ScramMechanism::Sha512 => Sha512::digest(bytes).to_vec(),
        }
    }

    /// The stored credential of `password`: StoredKey and ServerKey under `salt` and
    /// `iterations` (the password itself is not kept).
    pub fn credential(self, password: &[u8], salt: &[u8], iterations: u32) -> ScramCredential {
        let salted = self.salted_password(password, salt, iterations);
        let client_key = self.hmac(&salted, b"Client Key");
        ScramCredential {
            mechanism: self,
            salt: salt.to_vec(),
            iterations,
            stored_key: self.hash(&client_key),
            server_key: self.hmac(&salted, b"Server Key"),
        }
    }

    /// The server's check of a client proof: `ClientKey := ClientProof XOR ClientSignature`,
    /// then `H(ClientKey) == StoredKey`, compared in constant time.
    pub fn verify_proof(self, stored_key: &[u8], auth_message: &[u8], proof: &[u8]) -> bool {
        if proof.len() != self.hash_bytes() || stored_key.len() != self.hash_bytes() {
            return false;
        }
        let signature = self.hmac(stored_key, auth_message);
        let client_key: Vec<u8> = proof
            .iter()
            .zip(signature.iter())
            .map(|(proof_byte, signature_byte)| proof_byte ^ signature_byte)
            .collect();
        bool::from(self.hash(&client_key).ct_eq(stored_key))
    }

    /// `ServerSignature := HMAC(ServerKey, AuthMessage)`.
    pub fn server_signature(self, server_key: &[u8], auth_message: &[u8]) -> Vec<u8> {
        self.hmac(server_key, auth_message)
    }

    /// The client's proof: `ClientKey XOR HMAC(H(ClientKey), AuthMessage)`.
    pub fn client_proof(self, salted_password: &[u8], auth_message: &[u8]) -> Vec<u8> {
        let client_key = self.hmac(salted_password, b"Client Key");
        let signature = self.hmac(&self.hash(&client_key), auth_message);
        client_key
            .iter()
            .zip(signature.iter())
            .map(|(key_byte, signature_byte)| key_byte ^ signature_byte)
            .collect()
    }
}

impl fmt::Display for ScramMechanism {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// What a server keeps of a SCRAM password (RFC 5802 section 3): never the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredential {
    /// The hash the keys were made with.
    pub mechanism: ScramMechanism,
    /// The salt of `Hi`.
    pub salt: Vec<u8>,
    /// The iteration count of `Hi`.
    pub iterations: u32,
    /// `H(ClientKey)`.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: Vec<u8>,
}

impl fmt::Debug for ScramCredential {
    // Keys stay out of logs and panic messages.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("ScramCredential")
            .field("mechanism", &self.mechanism)
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramCredential {
    /// True if `password` is this credential's password: derives with the stored salt and
    /// iterations and compares StoredKey in constant time (how PLAIN logins are checked).
    pub fn matches_password(&self, password: &[u8]) -> bool {
        let derived = self
            .mechanism
            .credential(password, &self.salt, self.iterations);
        bool::from(derived.stored_key.ct_eq(&self.stored_key))
    }
}

/// Why SASL bytes were refused. Every variant is the client's fault; none is a panic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslError {
    /// The message is longer than [`SASL_MESSAGE_BYTES_MAX`].
    TooLong {
        message_bytes: usize,
        bytes_max: usize,
    },
    /// The message is not UTF-8 where the mechanism requires it.
    NotUtf8 { field: &'static str },
    /// A required attribute is missing or out of place.
    Missing { field: &'static str },
    /// An attribute's value is malformed.
    Malformed {
        field: &'static str,
        reason: &'static str,
    },
    /// The client asked for something this server does not do (channel binding, an
    /// authorization identity other than the user, a mandatory extension).
    Unsupported { feature: &'static str },
}

impl fmt::Display for SaslError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SaslError::TooLong {
                message_bytes,
                bytes_max,
            } => write!(
                formatter,
                "sasl message of {message_bytes} bytes exceeds max {bytes_max}"
            ),
            SaslError::NotUtf8 { field } => write!(formatter, "{field} is not utf-8"),
            SaslError::Missing { field } => write!(formatter, "{field} is missing"),
            SaslError::Malformed { field, reason } => {
                write!(formatter, "{field} is malformed: {reason}")
            }
            SaslError::Unsupported { feature } => write!(formatter, "{feature} is not supported"),
        }
    }
}

impl std::error::Error for SaslError {}

/// A SCRAM client-first message (`gs2-header client-first-message-bare`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst {
    /// The user name, with `=2C` and `=3D` decoded.
    pub user: String,
    /// The client's nonce (printable ASCII, no comma).
    pub nonce: String,
    /// `client-first-message-bare` as sent: it is part of the AuthMessage.
    pub bare: String,
}

/// A SCRAM client-final message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFinal {
    /// The base64 of the GS2 header (`c=`), echoed from the client-first message.
    pub channel_binding: String,
    /// The combined nonce (`r=`): the client's nonce followed by the server's.
    pub nonce: String,
    /// The decoded client proof (`p=`).
    pub proof: Vec<u8>,
    /// `client-final-message-without-proof` as sent: it is part of the AuthMessage.
    pub without_proof: String,
}

/// A SCRAM server-first message, as a client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFirst {
    /// The combined nonce.
    pub nonce: String,
    /// The decoded salt.
    pub salt: Vec<u8>,
    /// The iteration count.
    pub iterations: u32,
}

/// A PLAIN message (RFC 4616): `[authzid] NUL authcid NUL passwd`.
#[derive(Clone, PartialEq, Eq)]
pub struct Plain {
    /// The authorization identity, if one was given.
    pub authzid: Option<String>,
    /// The user.
    pub user: String,
    /// The password.
    pub password: String,
}

impl fmt::Debug for Plain {
    // The password stays out of logs.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Plain")
            .field("authzid", &self.authzid)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

fn check_length(bytes: &[u8]) -> Result<(), SaslError> {
    if bytes.len() > SASL_MESSAGE_BYTES_MAX {
        return Err(SaslError::TooLong {
            message_bytes: bytes.len(),
            bytes_max: SASL_MESSAGE_BYTES_MAX,
        });
    }
    Ok(())
}

fn utf8<'a>(bytes: &'a [u8], field: &'static str) -> Result<&'a str, SaslError> {
    std::str::from_utf8(bytes).map_err(|_| SaslError::NotUtf8 { field })
}

/// The value of attribute `name` at the front of `part` (`name=value`).
fn attribute<'a>(
    part: Option<&'a str>,
    name: char,
    field: &'static str,
) -> Result<&'a str, SaslError> {
    let part = part.ok_or(SaslError::Missing { field })?;
    let mut chars = part.chars();
    if chars.next() != Some(name) || chars.next() != Some('=') {
        return Err(SaslError::Missing { field });
    }
    Ok(&part[2..])
}

/// Decodes a SCRAM `saslname` (`=2C` is a comma, `=3D` an equals sign; any other `=` is
/// malformed).
fn decode_saslname(name: &str) -> Result<String, SaslError> {
    let malformed = SaslError::Malformed {
        field: "user name",
        reason: "bad = escape",
    };
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(malformed),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Encodes a user name as a SCRAM `saslname`.
pub fn encode_saslname(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

fn check_user(user: &str) -> Result<(), SaslError> {
    if user.is_empty() {
        return Err(SaslError::Missing { field: "user name" });
    }
    if user.len() > USER_NAME_BYTES_MAX {
        return Err(SaslError::Malformed {
            field: "user name",
            reason: "longer than 255 bytes",
        });
    }
    Ok(())
}

fn check_nonce(nonce: &str) -> Result<(), SaslError> {
    if nonce.is_empty() {
        return Err(SaslError::Missing { field: "nonce" });
    }
    // RFC 5802: printable ASCII except ','.
    if !nonce
        .bytes()
        .all(|byte| (0x21..=0x7e).contains(&byte) && byte != b',')
    {
        return Err(SaslError::Malformed {
            field: "nonce",
            reason: "not printable ascii",
        });
    }
    Ok(())
}

/// Parses a SCRAM client-first message.
///
/// Channel binding is not supported (`p=` is refused; `y` and `n` are accepted), nor an
/// authorization identity other than empty, nor mandatory extensions (`m=`). Kafka's
/// `tokenauth` extension (delegation tokens) is not offered by this server, so a client
/// never sends it.
///
/// # Errors
/// [`SaslError`] for any malformed or unsupported input.
pub fn parse_client_first(bytes: &[u8]) -> Result<ClientFirst, SaslError> {
    check_length(bytes)?;
    let text = utf8(bytes, "client-first message")?;
    let mut parts = text.splitn(3, ',');
    match parts.next() {
        Some("n") | Some("y") => {}
        Some(flag) if flag.starts_with("p=") => {
            return Err(SaslError::Unsupported {
                feature: "channel binding",
            })
        }
        _ => return Err(SaslError::Missing { field: "gs2 flag" }),
    }
    match parts.next() {
        Some("") => {}
        Some(_) => {
            return Err(SaslError::Unsupported {
                feature: "authorization identity",
            })
        }
        None => {
            return Err(SaslError::Missing {
                field: "gs2 header",
            })
        }
    }
    let bare = parts.next().ok_or(SaslError::Missing {
        field: "client-first-message-bare",
    })?;
    let mut fields = bare.split(',');
    let first = fields.next();
    if first.is_some_and(|part| part.starts_with("m=")) {
        return Err(SaslError::Unsupported {
            feature: "mandatory extension",
        });
    }
    let user = decode_saslname(attribute(first, 'n', "user name")?)?;
    check_user(&user)?;
    let nonce = attribute(fields.next(), 'r', "nonce")?;
    check_nonce(nonce)?;
    // Further attributes are optional extensions; they are ignored, as RFC 5802 allows.
    Ok(ClientFirst {
        user,
        nonce: nonce.to_string(),
        bare: bare.to_string(),
    })
}

/// Parses a SCRAM client-final message.
///
/// # Errors
/// [`SaslError`] for any malformed input.
pub fn parse_client_final(bytes: &[u8]) -> Result<ClientFinal, SaslError> {
    check_length(bytes)?;
    let text = utf8(bytes, "client-final message")?;
    let proof_at = text
        .rfind(",p=")
        .ok_or(SaslError::Missing { field: "proof" })?;
    let without_proof = &text[..proof_at];
    let proof_text = &text[proof_at + 3..];
    let mut fields = without_proof.split(',');
    let channel_binding = attribute(fields.next(), 'c', "channel binding")?;
    let nonce = attribute(fields.next(), 'r', "nonce")?;
    check_nonce(nonce)?;
    let proof = b64_decode(proof_text).ok_or(SaslError::Malformed {
        field: "proof",
        reason: "not base64",
    })?;
    Ok(ClientFinal {
        channel_binding: channel_binding.to_string(),
        nonce: nonce.to_string(),
        proof,
        without_proof: without_proof.to_string(),
    })
}

/// Parses a SCRAM server-first message (the client side).
///
/// # Errors
/// [`SaslError`] for any malformed input, or an iteration count outside
/// [`SCRAM_ITERATIONS_MIN`]..=[`SCRAM_ITERATIONS_MAX`].
pub fn parse_server_first(bytes: &[u8]) -> Result<ServerFirst, SaslError> {
    check_length(bytes)?;
    let text = utf8(bytes, "server-first message")?;
    let mut fields = text.split(',');
    let first = fields.next();
    if first.is_some_and(|part| part.starts_with("m=")) {
        return Err(SaslError::Unsupported {
            feature: "mandatory extension",
        });
    }
    let nonce = attribute(first, 'r', "nonce")?;
    check_nonce(nonce)?;
    let salt = b64_decode(attribute(fields.next(), 's', "salt")?).ok_or(SaslError::Malformed {
        field: "salt",
        reason: "not base64",
    })?;
    let iterations: u32 = attribute(fields.next(), 'i', "iterations")?
        .parse()
        .map_err(|_| SaslError::Malformed {
            field: "iterations",
            reason: "not a number",
        })?;
    if !(SCRAM_ITERATIONS_MIN..=SCRAM_ITERATIONS_MAX).contains(&iterations) {
        return Err(SaslError::Malformed {
            field: "iterations",
            reason: "outside 4096..=16384",
        });
    }
    Ok(ServerFirst {
        nonce: nonce.to_string(),
        salt,
        iterations,
    })
}

/// What a server-final message says (the client side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFinal {
    /// `v=`: the server's signature, to check.
    Verifier(Vec<u8>),
    /// `e=`: the server refused the login.
    Error(String),
}

/// Parses a SCRAM server-final message (the client side).
///
/// # Errors
/// [`SaslError`] for any malformed input.
pub fn parse_server_final(bytes: &[u8]) -> Result<ServerFinal, SaslError> {
    check_length(bytes)?;
    let text = utf8(bytes, "server-final message")?;
    let first = text.split(',').next();
    if let Ok(error) = attribute(first, 'e', "server error") {
        return Ok(ServerFinal::Error(error.to_string()));
    }
    let verifier = attribute(first, 'v', "verifier")?;
    b64_decode(verifier)
        .map(ServerFinal::Verifier)
        .ok_or(SaslError::Malformed {
            field: "verifier",
            reason: "not base64",
        })
}

/// Parses a PLAIN message (RFC 4616).
///
/// # Errors
/// [`SaslError`] if it is not `[authzid] NUL user NUL password` in UTF-8 with a non-empty user
/// and password.
pub fn parse_plain(bytes: &[u8]) -> Result<Plain, SaslError> {
    check_length(bytes)?;
    let mut parts = bytes.splitn(3, |byte| *byte == 0);
    let authzid = parts
        .next()
        .ok_or(SaslError::Missing { field: "authzid" })?;
    let user = parts
        .next()
        .ok_or(SaslError::Missing { field: "user name" })?;
    let password = parts
        .next()
        .ok_or(SaslError::Missing { field: "password" })?;
    if password.contains(&0) {
        return Err(SaslError::Malformed {
            field: "password",
            reason: "contains NUL",
        });
    }
    let user = utf8(user, "user name")?;
    check_user(user)?;
    let password = utf8(password, "password")?;
    if password.is_empty() {
        return Err(SaslError::Missing { field: "password" });
    }
    let authzid = utf8(authzid, "authzid")?;
    Ok(Plain {
        authzid: (!authzid.is_empty()).then(|| authzid.to_string()),
        user: user.to_string(),
        password: password.to_string(),
    })
}

/// The server-first message: `r=<client nonce><server nonce>,s=<salt>,i=<iterations>`.
pub fn server_first_message(nonce: &str, salt: &[u8], iterations: u32) -> String {
    format!("r={nonce},s={},i={iterations}", b64_encode(salt))
}

/// The server-final message of a successful login: `v=<server signature>`.
pub fn server_final_message(signature: &[u8]) -> String {
    format!("v={}", b64_encode(signature))
}

/// The bare client-first message (`n=<user>,r=<nonce>`), as a client sends it after the
/// `n,,` GS2 header.
pub fn client_first_bare(user: &str, nonce: &str) -> String {
    format!("n={},r={nonce}", encode_saslname(user))
}

/// The GS2 header a client without channel binding sends, and its base64 (`c=` value).
pub const GS2_HEADER: &str = "n,,";
/// `base64("n,,")`.
pub const GS2_HEADER_BASE64: &str = "biws";

/// The client-final message without its proof: `c=biws,r=<nonce>`.
pub fn client_final_without_proof(nonce: &str) -> String {
    format!("c={GS2_HEADER_BASE64},r={nonce}")
}

/// The AuthMessage both sides sign: `client-first-bare,server-first,client-final-without-proof`.
pub fn auth_message(
    client_first_bare: &str,
    server_first: &str,
    final_without_proof: &str,
) -> String {
    format!("{client_first_bare},{server_first},{final_without_proof}")
}

/// The full client-final message: `<without proof>,p=<base64 proof>`.
pub fn client_final_message(without_proof: &str, proof: &[u8]) -> String {
    format!("{without_proof},p={}", b64_encode(proof))
}

/// The printable nonce made of `random` bytes (base64, which has no comma).
pub fn nonce_from(random: &[u8]) -> String {
    b64_encode(random)
}

/// Standard base64 with padding (RFC 4648 section 4), which SCRAM uses; decoding refuses
/// non-canonical input.
fn b64_encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn b64_decode(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// Base64 as SCRAM writes it, for callers that show or store SCRAM values.
pub fn base64_encode(bytes: &[u8]) -> String {
    b64_encode(bytes)
}

/// Decodes SCRAM's base64; `None` unless canonical padded base64.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    b64_decode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 section 3: user "user", password "pencil".
    const RFC7677_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC7677_SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC7677_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC7677_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    #[test]
    fn rfc7677_sha256_vector_verifies_and_signs() {
        let first = parse_client_first(RFC7677_CLIENT_FIRST.as_bytes()).expect("client first");
        assert_eq!(first.user, "user");
        assert_eq!(first.nonce, "rOprNGfwEbeRWgbNEkqO");
        let server_first =
            parse_server_first(RFC7677_SERVER_FIRST.as_bytes()).expect("server first");
        let mechanism = ScramMechanism::Sha256;
        let credential =
            mechanism.credential(b"pencil", &server_first.salt, server_first.iterations);
        let last = parse_client_final(RFC7677_CLIENT_FINAL.as_bytes()).expect("client final");
        assert!(last.nonce.starts_with(&first.nonce));
        assert_eq!(last.channel_binding, GS2_HEADER_BASE64);
        let auth = auth_message(&first.bare, RFC7677_SERVER_FIRST, &last.without_proof);
        assert!(mechanism.verify_proof(&credential.stored_key, auth.as_bytes(), &last.proof));
        let signature = mechanism.server_signature(&credential.server_key, auth.as_bytes());
        assert_eq!(server_final_message(&signature), RFC7677_SERVER_FINAL);
        // The client side computes the same proof.
        let salted = mechanism.salted_password(b"pencil", &server_first.salt, 4096);
        let proof = mechanism.client_proof(&salted, auth.as_bytes());
        assert_eq!(
            client_final_message(&last.without_proof, &proof),
            RFC7677_CLIENT_FINAL
        );
        assert!(credential.matches_password(b"pencil"));
        assert!(!credential.matches_password(b"pencil2"));
    }

    #[test]
    fn rfc7677_wrong_proof_is_refused() {
        let server_first =
            parse_server_first(RFC7677_SERVER_FIRST.as_bytes()).expect("server first");
        let credential = ScramMechanism::Sha256.credential(b"not pencil", &server_first.salt, 4096);
        let first = parse_client_first(RFC7677_CLIENT_FIRST.as_bytes()).expect("client first");
        let last = parse_client_final(RFC7677_CLIENT_FINAL.as_bytes()).expect("client final");
        let auth = auth_message(&first.bare, RFC7677_SERVER_FIRST, &last.without_proof);
        assert!(!ScramMechanism::Sha256.verify_proof(
            &credential.stored_key,
            auth.as_bytes(),
            &last.proof
        ));
    }

    #[test]
    fn rfc5802_sha1_example_has_the_structure_the_parsers_take() {
        // RFC 5802 section 5 (SCRAM-SHA-1, which this server does not offer): the messages
        // have the same shape, so the parsers must take them.
        let first = parse_client_first(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL").expect("first");
        assert_eq!(first.bare, "n=user,r=fyko+d2lbbFgONRv9qkxdawL");
        let server = parse_server_first(
            b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
        )
        .expect("server first");
        assert_eq!(server.iterations, 4096);
        let last = parse_client_final(
            b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        )
        .expect("final");
        assert_eq!(last.proof.len(), 20);
        assert_eq!(
            parse_server_final(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ="),
            Ok(ServerFinal::Verifier(
                base64_decode("rmF9pqV8S7suAoZWja4dJRkFsKQ=").expect("base64")
            ))
        );
    }

    #[test]
    fn saslname_escapes_round_trip() {
        let first = parse_client_first(b"n,,n=a=2Cb=3Dc,r=abc").expect("first");
        assert_eq!(first.user, "a,b=c");
        assert_eq!(encode_saslname("a,b=c"), "a=2Cb=3Dc");
        assert!(parse_client_first(b"n,,n=a=2,r=abc").is_err());
        assert!(parse_client_first(b"n,,n=a=ZZb,r=abc").is_err());
    }

    #[test]
    fn client_first_refusals() {
        for bad in [
            &b""[..],
            b"n",
            b"n,,",
            b"p=tls-unique,,n=user,r=abc",
            b"n,a=admin,n=user,r=abc",
            b"n,,m=ext,n=user,r=abc",
            b"n,,n=,r=abc",
            b"n,,n=user",
            b"n,,n=user,r=",
            b"n,,n=user,r=a b",
            b"x,,n=user,r=abc",
            b"n,,n=user,r=\xff",
        ] {
            assert!(parse_client_first(bad).is_err(), "{bad:?}");
        }
        assert!(parse_client_first(&vec![b'a'; SASL_MESSAGE_BYTES_MAX + 1]).is_err());
    }

    #[test]
    fn client_final_refusals() {
        for bad in [
            &b""[..],
            b"c=biws,r=abc",
            b"c=biws,r=abc,p=!!!!",
            b"r=abc,c=biws,p=AAAA",
            b"c=biws,p=AAAA",
        ] {
            assert!(parse_client_final(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn server_first_iterations_are_bounded() {
        assert!(parse_server_first(b"r=abc,s=QSXCR+Q6sek8bf92,i=1").is_err());
        assert!(parse_server_first(b"r=abc,s=QSXCR+Q6sek8bf92,i=99999999").is_err());
        assert!(parse_server_first(b"r=abc,s=QSXCR+Q6sek8bf92,i=x").is_err());
        assert_eq!(
            parse_server_final(b"e=invalid-proof"),
            Ok(ServerFinal::Error("invalid-proof".to_string()))
        );
    }

    #[test]
    fn plain_parses_and_refuses() {
        let plain = parse_plain(b"\0alice\0secret").expect("plain");
        assert_eq!(plain.user, "alice");
        assert_eq!(plain.password, "secret");
        assert_eq!(plain.authzid, None);
        let plain = parse_plain(b"admin\0alice\0secret").expect("plain");
        assert_eq!(plain.authzid.as_deref(), Some("admin"));
        assert!(!format!("{plain:?}").contains("secret"));
        for bad in [
            &b""[..],
            b"alice",
            b"\0alice",
            b"\0\0secret",
            b"\0alice\0",
            b"\0a\0b\0c",
            b"\0\xff\0x",
        ] {
            assert!(parse_plain(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
            assert_eq!(base64_decode(encoded).as_deref(), Some(plain.as_bytes()));
        }
        for bad in ["Zg=", "Z===", "Zg==Zg==", "Zm9v!A==", "===="] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn sha512_credential_has_64_byte_keys() {
        let credential = ScramMechanism::Sha512.credential(b"pw", b"salt", 4096);
        assert_eq!(credential.stored_key.len(), 64);
        assert_eq!(credential.server_key.len(), 64);
        assert!(credential.matches_password(b"pw"));
        assert!(!format!("{credential:?}").contains("stored_key"));
    }
}
