//! One connection to RabbitMQ and its channels; declarations exactly as Celery makes
//! them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use lapin::options::{
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ExchangeKind};

use crate::broker::BrokerError;
use crate::storage::amqp::{AmqpOptions, is_connection};

/// The exchange and queue of Sprout's dead letters (and the routing key between them).
pub const DEAD: &str = "sprout.dead";

/// A connection and the two channels a broker uses on it.
pub(super) struct Link {
    /// Counts connections of one broker; deliveries remember theirs.
    pub generation: u64,
    pub conn: Connection,
    /// Consumers, their acks and rejects, and sync points.
    pub consume: Channel,
    /// Publishing, in confirm mode.
    pub publish: Channel,
    /// Set when something on this connection failed: the next call reconnects.
    pub broken: Arc<AtomicBool>,
}

impl Link {
    /// Connects and opens the channels.
    pub async fn open(opts: &AmqpOptions, generation: u64) -> Result<Link, BrokerError> {
        let conn = opts.connect().await.map_err(BrokerError::Connection)?;
        let consume = conn.create_channel().await.map_err(error)?;
        let publish = conn.create_channel().await.map_err(error)?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(error)?;
        Ok(Link {
            generation,
            conn,
            consume,
            publish,
            broken: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Whether the connection is still usable.
    pub fn usable(&self) -> bool {
        !self.broken.load(Ordering::SeqCst)
            && self.conn.status().connected()
            && self.consume.status().connected()
            && self.publish.status().connected()
    }

    /// Marks the connection broken when `e` is a connection error; returns `e` as a
    /// broker error.
    pub fn fail(&self, e: lapin::Error) -> BrokerError {
        if is_connection(&e) {
            self.broken.store(true, Ordering::SeqCst);
        }
        error(e)
    }

    /// A short-lived channel for what the server may refuse (a refused declaration
    /// closes its channel, and must not take the consumers with it).
    pub async fn scratch(&self) -> Result<Channel, BrokerError> {
        self.conn.create_channel().await.map_err(|e| self.fail(e))
    }

    /// Declares `queue` as Celery does: a durable direct exchange named after the queue,
    /// the durable queue with the options' arguments, and the binding with the queue's
    /// name as routing key.
    pub async fn declare(&self, opts: &AmqpOptions, queue: &str) -> Result<(), BrokerError> {
        let channel = self.scratch().await?;
        let result = declare_on(&channel, queue, opts.queue_arguments()).await;
        let _ = channel.close(200, "declared".into()).await;
        result.map_err(|e| match e {
            e if is_connection(&e) => self.fail(e),
            e => BrokerError::InvalidSettings(format!(
                "RabbitMQ refused to declare queue {queue:?}: {e}. Every producer and worker \
                 on a queue must declare it alike: give the broker URL max_priority= and \
                 queue_type= as the queue was first declared (Celery: \
                 task_queue_max_priority, task_default_queue_type)"
            )),
        })
    }

    /// Declares the dead-letter exchange and queue.
    pub async fn declare_dead(&self) -> Result<(), BrokerError> {
        let channel = self.scratch().await?;
        let result = declare_on(&channel, DEAD, FieldTable::default()).await;
        let _ = channel.close(200, "declared".into()).await;
        result.map_err(|e| self.fail(e))
    }

    /// Closes the connection (pending deliveries go back to their queues).
    pub async fn close(&self) {
        self.broken.store(true, Ordering::SeqCst);
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            self.conn.close(200, "bye".into()),
        )
        .await;
    }
}

async fn declare_on(channel: &Channel, queue: &str, args: FieldTable) -> lapin::Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            queue.into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
    let queue_opts = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), queue_opts, args)
        .await?;
    channel
        .queue_bind(
            queue.into(),
            queue.into(),
            queue.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// An AMQP client error as a broker error: connection problems are
/// [`BrokerError::Connection`], what the server refused [`BrokerError::Other`].
pub(super) fn error(e: lapin::Error) -> BrokerError {
    if is_connection(&e) {
        BrokerError::Connection(e.to_string())
    } else {
        BrokerError::Other(e.to_string())
    }
}

/// True when the server answered NOT_FOUND (a queue that does not exist).
pub(super) fn is_not_found(e: &lapin::Error) -> bool {
    matches!(
        e.kind(),
        lapin::ErrorKind::ProtocolError(p)
            if matches!(p.kind(), lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::NOTFOUND))
    )
}
