//! Who is calling and what they may do: users, their roles and tokens, and grants.
//!
//! Every request the API serves carries a [`Caller`] in its extensions, put there by the
//! authentication layer before any handler runs.

mod directory;
pub mod policy;
pub mod token;

use serde::{Deserialize, Serialize};

pub use directory::{Directory, UserInfo};

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including users and grants.
    Admin,
    /// Registers, updates and deletes the functions it owns; invokes them and the functions
    /// granted to it; reads their tasks.
    Developer,
    /// Invokes the functions granted to it and reads its own tasks.
    Invoker,
}

impl Role {
    /// The role as the API and the CLI spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Developer => "developer",
            Role::Invoker => "invoker",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The id of no user: what a task or function records when protected mode or an anonymous
/// caller made it.
pub const NO_USER: u32 = 0;

/// The name of tokenless callers under `serve --anonymous ROLE`, which may hold grants.
pub const ANONYMOUS: &str = "anonymous";

/// Who made a request, as the authentication layer found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The user's id; [`NO_USER`] for protected mode and anonymous callers.
    pub user: u32,
    /// The user's name, or `anonymous` / `local` for callers without a user.
    pub name: String,
    /// What the caller may do.
    pub role: Role,
}

impl Caller {
    /// A loopback caller while no user exists (protected mode): an admin without a user.
    pub fn local_admin() -> Caller {
        Caller {
            user: NO_USER,
            name: "local".into(),
            role: Role::Admin,
        }
    }

    /// Whether the caller is an admin.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

impl Caller {
    /// A request without a token, acting with `serve --anonymous ROLE`.
    pub fn anonymous(role: Role) -> Caller {
        Caller {
            user: NO_USER,
            name: ANONYMOUS.into(),
            role,
        }
    }
}

/// Errors of the users directory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A user of that name exists.
    #[error("a user named {name:?} already exists")]
    UserExists {
        /// The name.
        name: String,
    },
    /// No user has that name.
    #[error("no user named {name:?}")]
    UserNotFound {
        /// The name.
        name: String,
    },
    /// Removing the user would leave users but no admin to manage them.
    #[error(
        "{name:?} is the only admin: add another admin first (or remove the other users first, which returns the server to protected mode)"
    )]
    LastAdmin {
        /// The admin's name.
        name: String,
    },
    /// The system's random source failed.
    #[error("cannot draw random bytes for a token: {0}")]
    Random(String),
    /// A stored user has a role this version does not know.
    #[error("stored user {name:?} has an unknown role {role:?}")]
    CorruptRole {
        /// The user.
        name: String,
        /// The stored role.
        role: String,
    },
    /// The store failed.
    #[error("users store: {0}")]
    Store(#[from] crate::store::Error),
}
