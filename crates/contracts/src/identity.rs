//! The identity module's port: how other modules reach a customer.

use agora_kernel::UserId;
use async_trait::async_trait;

use crate::PortError;

/// Where and how to address a customer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Contact {
    /// The account's email address.
    pub email: String,
    /// Its display name (may be empty).
    pub name: String,
}

/// What the identity module offers other modules.
#[async_trait]
pub trait AccountsPort: Send + Sync {
    /// How to reach `user`; `None` when there is no such account.
    async fn contact(&self, user: UserId) -> Result<Option<Contact>, PortError>;
}
