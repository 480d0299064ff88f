//! What a broker and a result backend on the same server share, below both of them:
//! the embedded SQLite database file ([`sqlite`]) and the Redis connection settings
//! ([`redis`]). Each broker and backend is still opened on its own; when both name the
//! same place they may share one [`sqlite::Database`].

pub mod redis;
pub mod sqlite;
