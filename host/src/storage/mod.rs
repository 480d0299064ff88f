//! What a broker and a result backend on the same server share, below both of them:
//! the embedded SQLite database file ([`sqlite`]), the Redis connection settings
//! ([`redis`]) and the AMQP ones ([`amqp`]). Each broker and backend is still opened on its own; when both name the
//! same place they may share one [`sqlite::Database`].

pub mod amqp;
pub mod redis;
pub mod sqlite;
