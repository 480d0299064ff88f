//! The embedded SQLite result backend: the same [`SqliteStore`] as the embedded broker,
//! so `sqlite:PATH` keeps queues and results in one file. The implementation lives in
//! `crate::broker::sqlite`.

pub use crate::broker::sqlite::SqliteStore;
