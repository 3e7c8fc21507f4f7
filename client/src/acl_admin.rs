//! The ACL calls on [`Admin`] (issue #18): add, list and remove ACLs through CreateAcls,
//! DescribeAcls and DeleteAcls; the same ACLs as Kafka's apis and the HTTP API.

use wharf_protocol::messages::{
    AclAdminResponse, AclEntry, AclFilterRequest, AclListResponse, CreateAclsRequest,
};
use wharf_protocol::Request;

use crate::admin::Admin;
use crate::cluster::Target;
use crate::error::{check_code, Result};

impl Admin {
    /// Adds `acls`, all or none (durable when it returns).
    ///
    /// # Errors
    /// [`crate::Error::Server`] with `InvalidAcl` naming what is wrong, or a connection
    /// error.
    pub async fn create_acls(&self, acls: Vec<AclEntry>) -> Result<()> {
        let response: AclAdminResponse = self
            .client
            .call_unchecked(Target::Any, Request::CreateAcls(CreateAclsRequest { acls }))
            .await?;
        check_code(response.error, response.error_message)
    }

    /// The ACLs `filter` selects.
    ///
    /// # Errors
    /// [`crate::Error::Server`] with `InvalidAcl` for a malformed filter, or a connection
    /// error.
    pub async fn describe_acls(&self, filter: AclFilterRequest) -> Result<Vec<AclEntry>> {
        self.acl_list(Request::DescribeAcls(filter)).await
    }

    /// Removes the ACLs `filter` selects and answers them (durable when it returns).
    ///
    /// # Errors
    /// As [`Admin::describe_acls`].
    pub async fn delete_acls(&self, filter: AclFilterRequest) -> Result<Vec<AclEntry>> {
        self.acl_list(Request::DeleteAcls(filter)).await
    }

    async fn acl_list(&self, request: Request) -> Result<Vec<AclEntry>> {
        let response: AclListResponse = self.client.call_unchecked(Target::Any, request).await?;
        check_code(response.error, response.error_message)?;
        Ok(response.acls)
    }
}
