//! The remote-control transport of a broker (Celery's broadcast mailbox, kombu's
//! "pidbox"): requests broadcast to every worker, replies sent back to the one client
//! that asked.
//!
//! - Redis ([`crate::broker::redis::RedisMailbox`]): exactly kombu's layout, so the
//!   Python `celery inspect` / `celery control` CLI and `app.control` talk to Sprout
//!   workers, and `sprout inspect` talks to Celery workers.
//! - SQLite ([`crate::broker::sqlite::SqliteMailbox`]): two tables in the broker's file,
//!   polled — control through the file, for `sprout inspect` on the embedded broker.
//!
//! The wire shapes live in [`crate::celery::control`]; what the commands do is the
//! worker's (`worker::control`).

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::mpsc;

use super::BrokerError;
use crate::celery::control::{self, ControlError, ControlRequest, Reply};

/// Requests waiting to be handled that a listener buffers before dropping new ones.
pub const LISTEN_BUFFER: usize = 1024;

/// A broker's control channel.
#[async_trait]
pub trait Mailbox: Send + Sync {
    /// Starts receiving broadcast requests (the worker side). They arrive on the returned
    /// receiver, already checked (expired and malformed messages are dropped with a log
    /// line), until the receiver is dropped; the listener reconnects by itself. The
    /// listening task runs on the calling runtime.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker cannot be reached now.
    async fn listen(&self) -> Result<mpsc::Receiver<ControlRequest>, BrokerError>;

    /// Sends `reply` from the worker `hostname` to the client that sent `request` (does
    /// nothing when it wants no reply).
    ///
    /// # Errors
    /// [`BrokerError`]; the client then sees no reply from this worker.
    async fn reply(
        &self,
        request: &ControlRequest,
        hostname: &str,
        reply: Value,
    ) -> Result<(), BrokerError>;

    /// Broadcasts `request` (its ticket and `reply_to` are filled in) and collects the
    /// replies for up to `timeout`, or until `limit` replies came (the client side).
    ///
    /// # Errors
    /// [`BrokerError`] when the request could not be sent.
    async fn call(
        &self,
        request: ControlRequest,
        timeout: Duration,
        limit: Option<usize>,
    ) -> Result<Vec<Reply>, BrokerError>;
}

/// Decodes one raw request from a transport and hands it to the listener; expired and
/// malformed ones are dropped with a log line, and so is a request when
/// [`LISTEN_BUFFER`] are already waiting.
pub(crate) fn forward(raw: &[u8], tx: &mpsc::Sender<ControlRequest>) {
    let now = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
    match control::decode_request(raw, now) {
        Ok(request) => {
            if tx.try_send(request).is_err() {
                tracing::warn!("remote control: too many requests waiting; dropped one");
            }
        }
        Err(ControlError::Expired) => tracing::debug!("remote control: dropped an expired request"),
        Err(e) => tracing::warn!("remote control: {e}"),
    }
}

/// Decodes one raw reply for a client waiting on `ticket`; keeps it when it answers
/// that ticket.
pub(crate) fn collect_reply(raw: &[u8], ticket: &str, replies: &mut Vec<Reply>) {
    match control::decode_reply(raw) {
        Ok(reply) if reply.ticket.as_deref() == Some(ticket) => replies.push(reply),
        Ok(_) => {}
        Err(e) => tracing::warn!("remote control: unreadable reply: {e}"),
    }
}
