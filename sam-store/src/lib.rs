//! # sam-store
//!
//! Backends of [`sam_core::Store`].

mod error;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "_sql")]
pub mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;
mod task;

pub use error::{Error, Result};
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::{PgConfig, PgStore};
#[cfg(feature = "_sql")]
pub use sql::SqlStore;
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteConfig, SqliteStore};
