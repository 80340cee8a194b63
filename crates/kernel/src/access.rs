//! Who may do what: roles, the permissions they grant, and the authenticated caller.
//!
//! Roles are coarse and few; handlers never ask for a role, only for a named
//! [`Permission`]. The mapping from roles to permissions lives here, in code, so it
//! is reviewed like code and documented from one place (`docs/security.md`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::id::{ApiKeyId, SessionId, UserId};

/// A role a user account holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A shopper: their own account, carts and orders.
    Customer,
    /// Shop staff: the catalog, stock, everyone's orders.
    Staff,
    /// Administrators: everything staff may, plus users and keys.
    Admin,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 3] = [Role::Customer, Role::Staff, Role::Admin];

    /// The role's name on the wire and in the database.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Staff => "staff",
            Role::Admin => "admin",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The permissions this role grants.
    pub fn permissions(self) -> Permissions {
        use Permission::*;
        match self {
            Role::Customer => Permissions::EMPTY,
            Role::Staff => Permissions::of(&[
                CatalogWrite,
                InventoryManage,
                OrdersManage,
                PaymentsManage,
                EventsRead,
            ]),
            Role::Admin => Permissions::ALL,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! permissions {
    ($( $variant:ident = $name:literal, $marker:ident: $doc:literal; )*) => {
        /// Something a caller may be allowed to do. Named `area:action`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum Permission {
            $( #[doc = $doc] $variant, )*
        }

        impl Permission {
            /// Every permission, in table order.
            pub const ALL: &'static [Permission] = &[$(Permission::$variant,)*];

            /// The permission's name, e.g. `catalog:write`.
            pub const fn as_str(self) -> &'static str {
                match self { $(Permission::$variant => $name,)* }
            }
        }

        /// Type-level permissions, for extractors that check one before the handler
        /// runs (`Authorized<require::CatalogWrite>`).
        pub mod require {
            use super::{Permission, Requirement};
            $(
                #[doc = concat!("Requires `", $name, "`.")]
                #[derive(Debug, Clone, Copy)]
                pub struct $marker;
                impl Requirement for $marker {
                    const PERMISSION: Permission = Permission::$variant;
                }
            )*
        }
    };
}

permissions! {
    CatalogWrite = "catalog:write", CatalogWrite: "Create, change and delete products and categories; see inactive products.";
    InventoryManage = "inventory:manage", InventoryManage: "Read stock levels and their ledger; set and adjust stock.";
    OrdersManage = "orders:manage", OrdersManage: "See everyone's orders; cancel, refund and fulfil them.";
    PaymentsManage = "payments:manage", PaymentsManage: "See payments with their refunds and provider events; refund captured payments.";
    UsersManage = "users:manage", UsersManage: "List users, change their roles, disable and enable them.";
    ApiKeysManage = "api_keys:manage", ApiKeysManage: "Create, list and revoke API keys for service accounts (granting only permissions the caller holds).";
    EventsRead = "events:read", EventsRead: "Read the event log and the dead letters.";
    EventsManage = "events:manage", EventsManage: "Replay logged events to a consumer and re-drive dead letters.";
}

/// A permission known at compile time.
pub trait Requirement {
    /// The permission required.
    const PERMISSION: Permission;
}

impl Permission {
    /// Parses a permission name.
    pub fn parse(s: &str) -> Option<Permission> {
        Permission::ALL.iter().copied().find(|p| p.as_str() == s)
    }

    const fn bit(self) -> u64 {
        1 << self as u8
    }
}

impl Serialize for Permission {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of permissions.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Permissions(u64);

impl Permissions {
    /// No permission at all.
    pub const EMPTY: Permissions = Permissions(0);
    /// Every permission.
    pub const ALL: Permissions = Permissions::of(Permission::ALL);

    /// The set of `permissions`.
    pub const fn of(permissions: &[Permission]) -> Permissions {
        let mut bits = 0;
        let mut i = 0;
        while i < permissions.len() {
            bits |= permissions[i].bit();
            i += 1;
        }
        Permissions(bits)
    }

    /// Everything the `roles` grant together.
    pub fn of_roles(roles: &[Role]) -> Permissions {
        roles
            .iter()
            .fold(Permissions::EMPTY, |all, r| all.union(r.permissions()))
    }

    /// Whether `permission` is in the set.
    pub const fn contains(self, permission: Permission) -> bool {
        self.0 & permission.bit() != 0
    }

    /// Both sets together.
    pub const fn union(self, other: Permissions) -> Permissions {
        Permissions(self.0 | other.0)
    }

    /// The permissions in the set, in table order.
    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .iter()
            .copied()
            .filter(move |p| self.contains(*p))
    }
}

impl fmt::Debug for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.iter().map(Permission::as_str))
            .finish()
    }
}

/// Who is acting: a person's account, or a service account's API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A user account, signed in with an access token.
    User(UserId),
    /// A service account, calling with an API key.
    ApiKey(ApiKeyId),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::User(id) => id.fmt(f),
            Subject::ApiKey(id) => id.fmt(f),
        }
    }
}

/// An authenticated caller: who they are and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Who is acting.
    pub subject: Subject,
    /// The login session the credentials belong to (users only).
    pub session_id: Option<SessionId>,
    /// The account's roles when the credentials were issued (none for API keys).
    pub roles: Vec<Role>,
    /// What the caller may do.
    pub permissions: Permissions,
}

impl Principal {
    /// A signed-in user with the permissions of their `roles`.
    pub fn user(user_id: UserId, session_id: Option<SessionId>, roles: Vec<Role>) -> Self {
        Principal {
            subject: Subject::User(user_id),
            session_id,
            permissions: Permissions::of_roles(&roles),
            roles,
        }
    }

    /// A service account's API key holding `permissions`.
    pub fn api_key(id: ApiKeyId, permissions: Permissions) -> Self {
        Principal {
            subject: Subject::ApiKey(id),
            session_id: None,
            roles: Vec::new(),
            permissions,
        }
    }

    /// The user acting, unless an API key is.
    pub fn user_id(&self) -> Option<UserId> {
        match self.subject {
            Subject::User(id) => Some(id),
            Subject::ApiKey(_) => None,
        }
    }

    /// Whether the caller holds `permission`.
    pub fn can(&self, permission: Permission) -> bool {
        self.permissions.contains(permission)
    }

    /// Whether the caller may act on a resource owned by `owner`: the owner
    /// always may; others only with `permission` (for example `orders:read_all`).
    pub fn may_act_for(&self, owner: UserId, permission: Permission) -> bool {
        self.user_id() == Some(owner) || self.can(permission)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customers_hold_no_permission_and_admins_hold_all() {
        assert_eq!(Role::Customer.permissions(), Permissions::EMPTY);
        for p in Permission::ALL {
            assert!(Role::Admin.permissions().contains(*p), "{p}");
        }
    }

    #[test]
    fn staff_write_the_catalog_but_do_not_manage_users() {
        let staff = Role::Staff.permissions();
        assert!(staff.contains(Permission::CatalogWrite));
        assert!(!staff.contains(Permission::UsersManage));
    }

    #[test]
    fn roles_combine_their_permissions() {
        let both = Permissions::of_roles(&[Role::Customer, Role::Staff]);
        assert_eq!(both, Role::Staff.permissions());
    }

    #[test]
    fn names_round_trip() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.as_str()), Some(*p));
        }
        assert_eq!(Role::parse("root"), None);
        assert_eq!(Permission::parse("catalog:*"), None);
    }

    #[test]
    fn the_owner_may_act_and_others_need_the_permission() {
        let me = UserId::new();
        let customer = Principal::user(me, None, vec![Role::Customer]);
        assert!(customer.may_act_for(me, Permission::UsersManage));
        assert!(!customer.may_act_for(UserId::new(), Permission::UsersManage));
        let admin = Principal::user(me, None, vec![Role::Admin]);
        assert!(admin.may_act_for(UserId::new(), Permission::UsersManage));
        let key = Principal::api_key(
            ApiKeyId::new(),
            Permissions::of(&[Permission::CatalogWrite]),
        );
        assert_eq!(key.user_id(), None);
        assert!(!key.may_act_for(me, Permission::UsersManage));
        assert!(key.may_act_for(me, Permission::CatalogWrite));
    }
}
