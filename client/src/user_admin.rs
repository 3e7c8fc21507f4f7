//! The user calls on [`Admin`] (issue #18): create, change the password of, delete and list
//! users through CreateUser, AlterUserCredentials, DeleteUser and ListUsers. New passwords
//! are salted here (SCRAM's `Hi`), so only the salted form travels.

use wharf_protocol::messages::*;
use wharf_protocol::sasl::ScramMechanism;
use wharf_protocol::Request;

use crate::admin::Admin;
use crate::auth::upserts;
use crate::cluster::Target;
use crate::error::{check_code, Result};

/// One user as the broker lists it: names and mechanisms, never a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserDescription {
    /// The user name.
    pub name: String,
    /// The mechanisms the user can log in with, and their iteration counts.
    pub credentials: Vec<(String, u32)>,
}

impl Admin {
    /// Creates `name` with `password` for each of `mechanisms`.
    ///
    /// # Errors
    /// [`crate::Error::Server`] with `UserAlreadyExists` or `InvalidCredential`, or a
    /// connection error.
    pub async fn create_user(
        &self,
        name: &str,
        password: &str,
        mechanisms: &[ScramMechanism],
    ) -> Result<()> {
        let request = Request::CreateUser(UserCredentialsRequest {
            name: name.to_string(),
            credentials: upserts(password, mechanisms)?,
        });
        self.user_call(request).await
    }

    /// Sets a new `password` of an existing user for each of `mechanisms`.
    ///
    /// # Errors
    /// [`crate::Error::Server`] with `UnknownUser`, or a connection error.
    pub async fn change_password(
        &self,
        name: &str,
        password: &str,
        mechanisms: &[ScramMechanism],
    ) -> Result<()> {
        let request = Request::AlterUserCredentials(UserCredentialsRequest {
            name: name.to_string(),
            credentials: upserts(password, mechanisms)?,
        });
        self.user_call(request).await
    }

    /// Deletes a user.
    ///
    /// # Errors
    /// [`crate::Error::Server`] with `UnknownUser`, or a connection error.
    pub async fn delete_user(&self, name: &str) -> Result<()> {
        let request = Request::DeleteUser(DeleteUserRequest {
            name: name.to_string(),
        });
        self.user_call(request).await
    }

    /// Every user, by name.
    ///
    /// # Errors
    /// A connection or server error.
    pub async fn list_users(&self) -> Result<Vec<UserDescription>> {
        let response: ListUsersResponse = self
            .client
            .call_unchecked(Target::Any, Request::ListUsers(ListUsersRequest {}))
            .await?;
        check_code(response.error, response.error_message)?;
        Ok(response
            .users
            .into_iter()
            .map(|user| UserDescription {
                name: user.name,
                credentials: user
                    .credentials
                    .into_iter()
                    .map(|credential| (credential.mechanism, credential.iterations))
                    .collect(),
            })
            .collect())
    }

    async fn user_call(&self, request: Request) -> Result<()> {
        let response: UserAdminResponse = self.client.call_unchecked(Target::Any, request).await?;
        check_code(response.error, response.error_message)
    }
}
