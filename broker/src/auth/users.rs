//! The users and their SCRAM credentials, kept in `<data-dir>/users`, a checkpoint file
//! (`storage::checkpoint`: magic, version, sequence, CRC-32/IEEE, atomic replace with fsyncs),
//! read at start. A change is acknowledged only after the new file is durable.
//!
//! Payload of version 1 (big-endian; docs/STORAGE.md has the table):
//!
//! | bytes | field | meaning |
//! |---|---|---|
//! | 4 | user_count | u32 |
//! | per user: 2 + n | name | u16 length, UTF-8 |
//! | 1 | credential_count | u8, 1 or 2 |
//! | per credential: 1 | mechanism | 1 = SCRAM-SHA-256, 2 = SCRAM-SHA-512 |
//! | 4 | iterations | u32, 4096..=16384 |
//! | 1 + n | salt | u8 length |
//! | 1 + n | stored_key | u8 length, the hash's size |
//! | 1 + n | server_key | u8 length, the hash's size |
//! | 4 | token_count | u32, after the last user |
//! | per token: 1 + n | id | u8 length, ASCII hex |
//! | 2 + n | user | u16 length, UTF-8 |
//! | 1 + n | token_hash | u8 length, SHA-256 of the whole token (32 bytes) |
//! | 8 | created_ms | i64, Unix milliseconds |
//!
//! Passwords are never stored: only what RFC 5802 section 3 says a server keeps. Bearer
//! tokens (HTTP) are stored as the SHA-256 of the token: a token is 256 random bits, so a
//! fast hash suffices (nothing to guess), and the file never holds a usable token.
//!
//! **Invariants:** the file and memory change together, under one writer lock, file first; a
//! user has at least one credential (removing the last removes the user).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use wharf_protocol::sasl::{
    ScramCredential, ScramMechanism, SCRAM_ITERATIONS_MAX, SCRAM_ITERATIONS_MIN,
    USER_NAME_BYTES_MAX,
};

use crate::storage::{checkpoint, Fs};

/// The users file's name in the data directory.
pub const USERS_FILE: &str = "users";
/// Magic of the users file.
const USERS_MAGIC: [u8; 4] = *b"WUSR";
/// Version of its payload.
const USERS_VERSION: u16 = 1;
/// Most users: each costs a line in every listing and bytes in every rewrite of the file.
pub const USERS_MAX: usize = 100_000;
/// Most bearer tokens across all users, for the same reason.
pub const TOKENS_MAX: usize = 10_000;

/// A bearer token as stored: its id, owner and hash, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    /// Public id (hex), part of the token, shown in listings.
    pub id: String,
    /// The user the token logs in as.
    pub user: String,
    /// SHA-256 of the whole token string.
    pub hash: Vec<u8>,
    /// When it was made, Unix milliseconds.
    pub created_ms: i64,
}

/// Everything the users file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Stored {
    users: BTreeMap<String, Vec<ScramCredential>>,
    tokens: Vec<StoredToken>,
}

/// One user as listings show it: never a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// The user name.
    pub name: String,
    /// The mechanisms the user has credentials for, with their iteration counts.
    pub credentials: Vec<(ScramMechanism, u32)>,
}

/// A change to one user's credentials.
#[derive(Debug, Clone)]
pub enum CredentialChange {
    /// Adds or replaces the credential of its mechanism (creating the user if new).
    Set(ScramCredential),
    /// Creates a user with these credentials; refused if the user exists.
    Create(Vec<ScramCredential>),
    /// Adds or replaces these credentials of an existing user; refused if there is none.
    Update(Vec<ScramCredential>),
    /// Removes the credential of a mechanism (the user too, if it was the last).
    Remove(ScramMechanism),
    /// Removes the user.
    RemoveUser,
}

/// Why a user change was refused.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The caller may not do this (ACLs, issue #18).
    #[error(transparent)]
    Unauthorized(#[from] crate::acl::Denied),
    /// The name is empty, too long, or has control characters.
    #[error("invalid user name: {reason}")]
    InvalidName { reason: &'static str },
    /// No such user (or no credential of that mechanism).
    #[error("user {name} not found")]
    NotFound { name: String },
    /// A user of that name exists (create).
    #[error("user {name} already exists")]
    AlreadyExists { name: String },
    /// A credential outside the accepted bounds (iterations, key sizes).
    #[error("invalid credential: {reason}")]
    InvalidCredential { reason: String },
    /// The user count is at [`USERS_MAX`].
    #[error("{count} users reach the maximum of {max}")]
    TooMany { count: usize, max: usize },
    /// A running broker holds the data directory (offline changes only).
    #[error("data directory {path} is locked by a running wharfd; stop it, or use `wharf user create` against it")]
    Locked { path: String },
    /// Reading or writing the users file failed.
    #[error("{0}")]
    Storage(#[from] crate::storage::Error),
    /// The cluster's metadata log did not take the change (no leader, or the outcome is
    /// unknown); nothing changed on this node.
    #[error("the cluster did not take the user change: {message}")]
    Cluster { no_leader: bool, message: String },
}

/// The user store.
#[derive(Debug)]
pub struct Users {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    /// Users by name and tokens; read by every login.
    stored: Mutex<Stored>,
    /// Held across a whole change (file write included), so changes apply in one order and
    /// the file never goes back to an older state. Only on the blocking pool.
    writer: Mutex<u64>,
}

impl Users {
    /// Reads `<data_dir>/users` (none yet: no users).
    ///
    /// # Errors
    /// I/O errors, or `Corrupt` if the file fails its checks (a damaged users file is not
    /// silently treated as empty: that would drop every credential).
    pub fn open(fs: Arc<dyn Fs>, data_dir: &Path) -> Result<Users, crate::storage::Error> {
        let path = data_dir.join(USERS_FILE);
        let (sequence, stored) = match checkpoint::read(fs.as_ref(), &path, USERS_MAGIC)? {
            None => (0, Stored::default()),
            Some(file) => {
                if file.version != USERS_VERSION {
                    return Err(crate::storage::Error::corrupt(
                        &path,
                        0,
                        format!("users file version {} is not {USERS_VERSION}", file.version),
                    ));
                }
                let stored = decode_payload(&file.payload)
                    .map_err(|reason| crate::storage::Error::corrupt(&path, 0, reason))?;
                (file.sequence, stored)
            }
        };
        Ok(Users {
            fs,
            dir: data_dir.to_path_buf(),
            stored: Mutex::new(stored),
            writer: Mutex::new(sequence),
        })
    }

    /// Opens the users of a data directory no broker is running on, holding its lock for the
    /// lifetime of the returned guard (`wharfd user create`).
    ///
    /// # Errors
    /// [`UserError::Locked`] while a broker holds the directory, storage errors otherwise.
    pub fn open_offline(
        fs: Arc<dyn Fs>,
        data_dir: &Path,
    ) -> Result<(Users, crate::storage::fs::DirLock), UserError> {
        fs.create_dir_all(data_dir)
            .map_err(|source| crate::storage::Error::io("create data dir", data_dir, source))?;
        let lock = fs.lock_dir(data_dir).map_err(|source| {
            if source.kind() == std::io::ErrorKind::WouldBlock {
                UserError::Locked {
                    path: data_dir.display().to_string(),
                }
            } else {
                UserError::Storage(crate::storage::Error::io("lock data dir", data_dir, source))
            }
        })?;
        Ok((Users::open(fs, data_dir)?, lock))
    }

    /// Whether a user of this name exists.
    pub fn exists(&self, name: &str) -> bool {
        self.stored().users.contains_key(name)
    }

    /// How many users exist.
    pub fn count(&self) -> usize {
        self.stored().users.len()
    }

    /// How many tokens exist.
    pub fn token_count(&self) -> usize {
        self.stored().tokens.len()
    }

    /// True when no user exists.
    pub fn is_empty(&self) -> bool {
        self.stored().users.is_empty()
    }

    /// Every user, by name.
    pub fn list(&self) -> Vec<UserInfo> {
        self.stored()
            .users
            .iter()
            .map(|(name, credentials)| UserInfo {
                name: name.clone(),
                credentials: credentials
                    .iter()
                    .map(|credential| (credential.mechanism, credential.iterations))
                    .collect(),
            })
            .collect()
    }

    /// The user's credential for `mechanism`, if any.
    pub fn credential(&self, name: &str, mechanism: ScramMechanism) -> Option<ScramCredential> {
        self.stored()
            .users
            .get(name)?
            .iter()
            .find(|credential| credential.mechanism == mechanism)
            .cloned()
    }

    /// Every credential of the user (PLAIN checks against the first).
    pub fn credentials(&self, name: &str) -> Vec<ScramCredential> {
        self.stored().users.get(name).cloned().unwrap_or_default()
    }

    /// Applies `change` to `name`, durably (blocking: writes and fsyncs the users file;
    /// call it on the blocking pool).
    ///
    /// # Errors
    /// [`UserError`]; on error nothing changed.
    pub fn change(&self, name: &str, change: CredentialChange) -> Result<(), UserError> {
        check_name(name)?;
        match &change {
            CredentialChange::Set(credential) => check_credential(credential)?,
            CredentialChange::Create(credentials) | CredentialChange::Update(credentials) => {
                if credentials.is_empty() {
                    return Err(UserError::InvalidCredential {
                        reason: "no credential given".to_string(),
                    });
                }
                for credential in credentials {
                    check_credential(credential)?;
                }
            }
            CredentialChange::Remove(_) | CredentialChange::RemoveUser => {}
        }
        let mut sequence = self
            .writer
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let mut stored = self.stored().clone();
        let next = &mut stored.users;
        match change {
            CredentialChange::Set(credential) => set(next, name, vec![credential])?,
            CredentialChange::Create(credentials) => {
                if next.contains_key(name) {
                    return Err(UserError::AlreadyExists {
                        name: name.to_string(),
                    });
                }
                set(next, name, credentials)?;
            }
            CredentialChange::Update(credentials) => {
                if !next.contains_key(name) {
                    return Err(not_found(name));
                }
                set(next, name, credentials)?;
            }
            CredentialChange::Remove(mechanism) => {
                let credentials = next.get_mut(name).ok_or_else(|| not_found(name))?;
                let before = credentials.len();
                credentials.retain(|existing| existing.mechanism != mechanism);
                if credentials.len() == before {
                    return Err(not_found(name));
                }
                if credentials.is_empty() {
                    next.remove(name);
                }
            }
            CredentialChange::RemoveUser => {
                next.remove(name).ok_or_else(|| not_found(name))?;
            }
        }
        // A user's tokens go with the user.
        let users = &stored.users;
        stored
            .tokens
            .retain(|token| users.contains_key(&token.user));
        self.commit(&mut sequence, stored)
    }

    /// Adds a bearer token of an existing user, durably (blocking).
    ///
    /// # Errors
    /// [`UserError::NotFound`] for an unknown user, [`UserError::TooMany`] at
    /// [`TOKENS_MAX`], storage errors.
    pub fn add_token(&self, token: StoredToken) -> Result<(), UserError> {
        let mut sequence = self
            .writer
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let mut stored = self.stored().clone();
        if !stored.users.contains_key(&token.user) {
            return Err(not_found(&token.user));
        }
        if stored.tokens.len() >= TOKENS_MAX {
            return Err(UserError::TooMany {
                count: stored.tokens.len(),
                max: TOKENS_MAX,
            });
        }
        stored.tokens.push(token);
        self.commit(&mut sequence, stored)
    }

    /// Removes `user`'s token `id`, durably (blocking).
    ///
    /// # Errors
    /// [`UserError::NotFound`] if the user has no such token, storage errors.
    pub fn remove_token(&self, user: &str, id: &str) -> Result<(), UserError> {
        let mut sequence = self
            .writer
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let mut stored = self.stored().clone();
        let before = stored.tokens.len();
        stored
            .tokens
            .retain(|token| !(token.user == user && token.id == id));
        if stored.tokens.len() == before {
            return Err(UserError::NotFound {
                name: format!("token {id} of {user}"),
            });
        }
        self.commit(&mut sequence, stored)
    }

    /// The token with public id `id`, if any.
    pub fn token(&self, id: &str) -> Option<StoredToken> {
        self.stored()
            .tokens
            .iter()
            .find(|token| token.id == id)
            .cloned()
    }

    /// `user`'s tokens.
    pub fn tokens_of(&self, user: &str) -> Vec<StoredToken> {
        self.stored()
            .tokens
            .iter()
            .filter(|token| token.user == user)
            .cloned()
            .collect()
    }

    /// Every user's credentials and every token, as stored.
    pub fn snapshot(&self) -> (BTreeMap<String, Vec<ScramCredential>>, Vec<StoredToken>) {
        let stored = self.stored();
        (stored.users.clone(), stored.tokens.clone())
    }

    /// Makes the users and tokens exactly these: what the cluster's metadata holds, on a
    /// node that follows it. Answers whether anything changed; durable before it returns
    /// (blocking).
    ///
    /// # Errors
    /// [`UserError::InvalidName`] or [`UserError::InvalidCredential`] for the first entry
    /// this file could not hold (nothing changes), storage errors.
    pub fn replace(
        &self,
        mut users: BTreeMap<String, Vec<ScramCredential>>,
        mut tokens: Vec<StoredToken>,
    ) -> Result<bool, UserError> {
        for (name, credentials) in &mut users {
            check_name(name)?;
            for credential in credentials.iter() {
                check_credential(credential)?;
            }
            credentials.sort_by_key(|credential| credential.mechanism);
        }
        users.retain(|_, credentials| !credentials.is_empty());
        tokens.retain(|token| users.contains_key(&token.user));
        tokens.sort_by(|left, right| left.id.cmp(&right.id));
        let mut sequence = self
            .writer
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let mut current = self.stored().clone();
        current.tokens.sort_by(|left, right| left.id.cmp(&right.id));
        let next = Stored { users, tokens };
        if next == current {
            return Ok(false);
        }
        self.commit(&mut sequence, next)?;
        Ok(true)
    }

    /// Writes `stored` durably, then makes it current (the writer lock is held).
    fn commit(&self, sequence: &mut u64, stored: Stored) -> Result<(), UserError> {
        let payload = encode_payload(&stored);
        checkpoint::write(
            self.fs.as_ref(),
            &self.dir,
            USERS_FILE,
            USERS_MAGIC,
            USERS_VERSION,
            *sequence + 1,
            &payload,
        )?;
        *sequence += 1;
        *self.stored() = stored;
        Ok(())
    }

    fn stored(&self) -> MutexGuard<'_, Stored> {
        self.stored
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// Adds or replaces `credentials` of `name` in `users`.
fn set(
    users: &mut BTreeMap<String, Vec<ScramCredential>>,
    name: &str,
    credentials: Vec<ScramCredential>,
) -> Result<(), UserError> {
    if !users.contains_key(name) && users.len() >= USERS_MAX {
        return Err(UserError::TooMany {
            count: users.len(),
            max: USERS_MAX,
        });
    }
    let existing = users.entry(name.to_string()).or_default();
    for credential in credentials {
        existing.retain(|old| old.mechanism != credential.mechanism);
        existing.push(credential);
    }
    existing.sort_by_key(|credential| credential.mechanism);
    Ok(())
}

fn not_found(name: &str) -> UserError {
    UserError::NotFound {
        name: name.to_string(),
    }
}

/// Checks a user name: 1..=255 bytes, no control characters.
///
/// # Errors
/// [`UserError::InvalidName`].
pub fn check_name(name: &str) -> Result<(), UserError> {
    if name.is_empty() {
        return Err(UserError::InvalidName { reason: "empty" });
    }
    if name.len() > USER_NAME_BYTES_MAX {
        return Err(UserError::InvalidName {
            reason: "longer than 255 bytes",
        });
    }
    if name.chars().any(char::is_control) {
        return Err(UserError::InvalidName {
            reason: "control characters",
        });
    }
    Ok(())
}

/// Checks a credential's iteration count, salt and key sizes.
///
/// # Errors
/// [`UserError::InvalidCredential`].
pub fn check_credential(credential: &ScramCredential) -> Result<(), UserError> {
    let hash_bytes = credential.mechanism.hash_bytes();
    if !(SCRAM_ITERATIONS_MIN..=SCRAM_ITERATIONS_MAX).contains(&credential.iterations) {
        return Err(UserError::InvalidCredential {
            reason: format!(
                "{} iterations outside {SCRAM_ITERATIONS_MIN}..={SCRAM_ITERATIONS_MAX}",
                credential.iterations
            ),
        });
    }
    if credential.salt.is_empty() || credential.salt.len() > usize::from(u8::MAX) {
        return Err(UserError::InvalidCredential {
            reason: format!("salt of {} bytes outside 1..=255", credential.salt.len()),
        });
    }
    if credential.stored_key.len() != hash_bytes || credential.server_key.len() != hash_bytes {
        return Err(UserError::InvalidCredential {
            reason: format!("keys are not {hash_bytes} bytes"),
        });
    }
    Ok(())
}

fn mechanism_code(mechanism: ScramMechanism) -> u8 {
    match mechanism {
        ScramMechanism::Sha256 => 1,
        ScramMechanism::Sha512 => 2,
    }
}

fn encode_payload(stored: &Stored) -> Vec<u8> {
    let users = &stored.users;
    let mut out = Vec::new();
    let count = u32::try_from(users.len()).expect("users are at most USERS_MAX");
    out.extend_from_slice(&count.to_be_bytes());
    for (name, credentials) in users {
        let name_bytes = u16::try_from(name.len()).expect("names are at most 255 bytes");
        out.extend_from_slice(&name_bytes.to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(u8::try_from(credentials.len()).expect("one credential per mechanism"));
        for credential in credentials {
            out.push(mechanism_code(credential.mechanism));
            out.extend_from_slice(&credential.iterations.to_be_bytes());
            for field in [
                &credential.salt,
                &credential.stored_key,
                &credential.server_key,
            ] {
                out.push(u8::try_from(field.len()).expect("checked by check_credential"));
                out.extend_from_slice(field);
            }
        }
    }
    let token_count = u32::try_from(stored.tokens.len()).expect("tokens are at most TOKENS_MAX");
    out.extend_from_slice(&token_count.to_be_bytes());
    for token in &stored.tokens {
        out.push(u8::try_from(token.id.len()).expect("ids are 16 hex digits"));
        out.extend_from_slice(token.id.as_bytes());
        let user_bytes = u16::try_from(token.user.len()).expect("names are at most 255 bytes");
        out.extend_from_slice(&user_bytes.to_be_bytes());
        out.extend_from_slice(token.user.as_bytes());
        out.push(u8::try_from(token.hash.len()).expect("a SHA-256 is 32 bytes"));
        out.extend_from_slice(&token.hash);
        out.extend_from_slice(&token.created_ms.to_be_bytes());
    }
    out
}

/// A cursor over the payload that reports truncation instead of panicking.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, count: usize, field: &str) -> Result<&'a [u8], String> {
        if self.bytes.len() < count {
            return Err(format!(
                "{field} needs {count} bytes, {} left",
                self.bytes.len()
            ));
        }
        let (taken, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Ok(taken)
    }

    fn u8(&mut self, field: &str) -> Result<u8, String> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &str) -> Result<u16, String> {
        let bytes = self.take(2, field)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn u32(&mut self, field: &str) -> Result<u32, String> {
        let bytes = self.take(4, field)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn short_bytes(&mut self, field: &str) -> Result<Vec<u8>, String> {
        let count = usize::from(self.u8(field)?);
        Ok(self.take(count, field)?.to_vec())
    }
}

fn decode_payload(payload: &[u8]) -> Result<Stored, String> {
    let mut cursor = Cursor { bytes: payload };
    let count = cursor.u32("user_count")?;
    if usize::try_from(count).map_or(true, |count| count > USERS_MAX) {
        return Err(format!("{count} users exceed max {USERS_MAX}"));
    }
    let mut users = BTreeMap::new();
    for _ in 0..count {
        let name_bytes = usize::from(cursor.u16("name")?);
        let name = std::str::from_utf8(cursor.take(name_bytes, "name")?)
            .map_err(|_| "user name is not utf-8".to_string())?
            .to_string();
        let credential_count = cursor.u8("credential_count")?;
        let mut credentials = Vec::new();
        for _ in 0..credential_count {
            let mechanism = match cursor.u8("mechanism")? {
                1 => ScramMechanism::Sha256,
                2 => ScramMechanism::Sha512,
                other => return Err(format!("unknown mechanism {other}")),
            };
            let credential = ScramCredential {
                mechanism,
                iterations: cursor.u32("iterations")?,
                salt: cursor.short_bytes("salt")?,
                stored_key: cursor.short_bytes("stored_key")?,
                server_key: cursor.short_bytes("server_key")?,
            };
            check_credential(&credential).map_err(|error| error.to_string())?;
            credentials.push(credential);
        }
        users.insert(name, credentials);
    }
    let token_count = cursor.u32("token_count")?;
    if usize::try_from(token_count).map_or(true, |count| count > TOKENS_MAX) {
        return Err(format!("{token_count} tokens exceed max {TOKENS_MAX}"));
    }
    let mut tokens = Vec::new();
    for _ in 0..token_count {
        let id = String::from_utf8(cursor.short_bytes("token id")?)
            .map_err(|_| "token id is not utf-8".to_string())?;
        let user_bytes = usize::from(cursor.u16("token user")?);
        let user = std::str::from_utf8(cursor.take(user_bytes, "token user")?)
            .map_err(|_| "token user is not utf-8".to_string())?
            .to_string();
        let hash = cursor.short_bytes("token hash")?;
        let created = cursor.take(8, "token created_ms")?;
        let mut created_bytes = [0u8; 8];
        created_bytes.copy_from_slice(created);
        tokens.push(StoredToken {
            id,
            user,
            hash,
            created_ms: i64::from_be_bytes(created_bytes),
        });
    }
    if !cursor.bytes.is_empty() {
        return Err(format!("{} bytes after the last token", cursor.bytes.len()));
    }
    Ok(Stored { users, tokens })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::RealFs;

    fn credential(mechanism: ScramMechanism, password: &str) -> ScramCredential {
        mechanism.credential(password.as_bytes(), b"0123456789abcdef", 4096)
    }

    #[test]
    fn users_survive_reopen_and_deletes_stick() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fs: Arc<dyn Fs> = Arc::new(RealFs);
        let users = Users::open(fs.clone(), dir.path()).expect("open");
        assert!(users.is_empty());
        users
            .change(
                "alice",
                CredentialChange::Set(credential(ScramMechanism::Sha256, "pw")),
            )
            .expect("set");
        users
            .change(
                "alice",
                CredentialChange::Set(credential(ScramMechanism::Sha512, "pw")),
            )
            .expect("set");
        users
            .change(
                "bob",
                CredentialChange::Set(credential(ScramMechanism::Sha512, "pw2")),
            )
            .expect("set");
        users
            .change("bob", CredentialChange::RemoveUser)
            .expect("delete");
        drop(users);
        let users = Users::open(fs, dir.path()).expect("reopen");
        assert_eq!(
            users.list(),
            vec![UserInfo {
                name: "alice".to_string(),
                credentials: vec![
                    (ScramMechanism::Sha256, 4096),
                    (ScramMechanism::Sha512, 4096)
                ],
            }]
        );
        let stored = users
            .credential("alice", ScramMechanism::Sha512)
            .expect("credential");
        assert!(stored.matches_password(b"pw"));
        // The password is not in the file.
        let bytes = std::fs::read(dir.path().join(USERS_FILE)).expect("read");
        assert!(!bytes.windows(2).any(|window| window == b"pw"));
    }

    #[test]
    fn removing_the_last_credential_removes_the_user() {
        let dir = tempfile::tempdir().expect("temp dir");
        let users = Users::open(Arc::new(RealFs), dir.path()).expect("open");
        users
            .change(
                "carol",
                CredentialChange::Set(credential(ScramMechanism::Sha256, "x")),
            )
            .expect("set");
        users
            .change("carol", CredentialChange::Remove(ScramMechanism::Sha256))
            .expect("remove");
        assert!(users.is_empty());
        assert!(matches!(
            users.change("carol", CredentialChange::RemoveUser),
            Err(UserError::NotFound { .. })
        ));
    }

    #[test]
    fn bad_names_and_credentials_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let users = Users::open(Arc::new(RealFs), dir.path()).expect("open");
        let good = credential(ScramMechanism::Sha256, "x");
        for name in ["", "a\nb", &"x".repeat(256)] {
            assert!(users
                .change(name, CredentialChange::Set(good.clone()))
                .is_err());
        }
        let mut weak = good.clone();
        weak.iterations = 1;
        assert!(users.change("dave", CredentialChange::Set(weak)).is_err());
        assert!(users.is_empty());
    }

    #[test]
    fn corrupt_payload_is_an_error_not_an_empty_store() {
        let mut stored = Stored::default();
        stored.users.insert(
            "eve".to_string(),
            vec![credential(ScramMechanism::Sha256, "x")],
        );
        stored.tokens.push(StoredToken {
            id: "0011223344556677".to_string(),
            user: "eve".to_string(),
            hash: vec![7; 32],
            created_ms: 1_700_000_000_000,
        });
        let payload = encode_payload(&stored);
        assert_eq!(decode_payload(&payload).expect("decode"), stored);
        for cut in 0..payload.len() {
            assert!(decode_payload(&payload[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn offline_open_refuses_a_locked_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fs: Arc<dyn Fs> = Arc::new(RealFs);
        let (_users, _lock) = Users::open_offline(fs.clone(), dir.path()).expect("first");
        assert!(matches!(
            Users::open_offline(fs, dir.path()),
            Err(UserError::Locked { .. })
        ));
    }
}

#[cfg(test)]
mod token_tests {
    use super::*;
    use crate::storage::RealFs;

    #[test]
    fn tokens_survive_reopen_and_go_with_their_user() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fs: Arc<dyn Fs> = Arc::new(RealFs);
        let users = Users::open(fs.clone(), dir.path()).expect("open");
        let token = StoredToken {
            id: "00aa".to_string(),
            user: "frank".to_string(),
            hash: vec![1; 32],
            created_ms: 5,
        };
        assert!(matches!(
            users.add_token(token.clone()),
            Err(UserError::NotFound { .. })
        ));
        let credential = ScramMechanism::Sha256.credential(b"pw", b"salt", 4096);
        users
            .change("frank", CredentialChange::Set(credential))
            .expect("user");
        users.add_token(token.clone()).expect("token");
        drop(users);
        let users = Users::open(fs, dir.path()).expect("reopen");
        assert_eq!(users.token("00aa"), Some(token));
        assert!(users.remove_token("someone-else", "00aa").is_err());
        users
            .change("frank", CredentialChange::RemoveUser)
            .expect("delete");
        assert_eq!(users.token("00aa"), None);
    }
}
