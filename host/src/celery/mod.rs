//! Celery protocol v2: the wire forms Sprout shares with Python Celery clients and
//! workers (the contract is `docs/PROTOCOL.md`; section numbers below refer to it).
//!
//! Broker-neutral and I/O-free: the Redis broker and backend (and later AMQP) call into
//! this module at their edges.
//!
//! - [`message`] — a task message (kombu envelope, base64 JSON body `[args, kwargs,
//!   embed]`) ⇄ [`Job`](crate::model::Job) (§2–§4).
//! - [`result`] — a [`ResultRecord`](crate::model::ResultRecord) ⇄ the
//!   `celery-task-meta-<id>` JSON, exceptions as `{exc_type, exc_message, exc_module}`
//!   (§6).
//! - [`workflow`] — what to publish and store after a job settles: chain steps,
//!   link callbacks, errbacks, chain failure propagation, retries, chord pieces (§7–§8).
//! - [`amqp`] — the same task message as kombu's AMQP transport carries it (headers,
//!   properties, JSON body) ⇄ [`Job`](crate::model::Job).
//! - [`control`] — remote control (kombu's pidbox): requests from `celery inspect` /
//!   `celery control` and the workers' replies.
//! - [`events`] — monitoring events (`-E`) for Flower: worker and task event bodies and
//!   their envelope on the `celeryev` exchange.
//! - [`keys`] — Redis key names: queues and priority buckets, `unacked`, results (§1, §4).
//! - [`isotime`], `pyjson` — timestamps and JSON exactly as Python writes them.
//!
//! # What the worker loop must do for Celery jobs
//! 1. Before running: a job whose `expires` has passed is stored REVOKED
//!    (`TaskRevokedError`, message `expired`) and acked; an unknown task name is stored
//!    FAILURE (`NotRegistered`, message = the task name) and acked (§5, §7).
//! 2. Optionally store STARTED (Celery's `task_track_started`; off by default there —
//!    it costs a write per job).
//! 3. After running: `let s = celery::settle(&job, record)`; publish `s.publish`, then
//!    store `s.store`, then ack. `ignore_result` needs nothing special: the Redis
//!    backend skips records whose `celery.ignore_result` is set. Chords need nothing
//!    either when the backend came from `broker::connect` (it counts chord parts as it
//!    stores them and publishes the body through its broker); a backend without a
//!    broker needs `backend.on_chord_part_return(&job, &s.store[0], broker)` after the
//!    store (calling both is harmless: a part is counted once).
//! 4. Retry: store RETRY (via `settle`) and `broker.retry(tag, &celery::retry_job(&job, eta))`.
//! 5. Hard time limit: FAILURE with kind `TimeLimitExceeded` and the seconds as message.

pub mod amqp;
pub mod control;
pub mod events;
pub mod isotime;
pub mod keys;
pub mod message;
pub(crate) mod pyjson;
pub mod result;
pub mod workflow;

pub use message::{Incoming, Outgoing, decode, encode};
pub use result::{decode_meta, encode_meta};
pub use workflow::{Settlement, followups, retry_job, settle};
