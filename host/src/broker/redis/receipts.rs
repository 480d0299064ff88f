//! Reservations whose reply was lost.
//!
//! `scripts::RESERVE` moves messages into `unacked` on the server in one atomic step,
//! but the reply that tells this process which messages it now holds can still be
//! lost: the connection drops after Redis ran the script (`CLIENT KILL`, a restart, a
//! network cut) and before the reply arrived. Those reservations belong to nobody who
//! runs them, and while this worker stays live nothing else restores them before their
//! lease ends (with `--lease 3600`, an hour).
//!
//! So each RESERVE also writes the tags it reserved to a **receipt**, a list key of its
//! own *lane* (`sprout.receipt.<identity>.<lane>`, one lane per fetch in flight,
//! overwritten by the lane's next RESERVE and expiring with the lease). A RESERVE that
//! fails for any reason leaves its lane *lost*, together with the lease score it wrote;
//! the next fetch (and shutdown) reads the lost receipts and puts each reservation that
//! still carries that score back at the front of its queue, marked redelivered — the
//! same path as a released message. A reservation whose score changed was restored by a
//! sweep and may be someone else's now (any later reservation scores higher), so it is
//! left alone. Shutdown deletes the receipts no fetch is using.

use std::time::Duration;

use super::{BrokerError, RedisBroker, broker_error};
use crate::celery::keys;

/// The prefix of receipt keys: `sprout.receipt.<identity>.<lane>`.
const RECEIPT_PREFIX: &str = "sprout.receipt.";

/// A RESERVE whose outcome is unknown.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Lost {
    lane: u32,
    /// The lease score that RESERVE wrote.
    score: f64,
}

/// The receipt lanes of one broker: which are free, which hold a lost receipt.
#[derive(Debug, Default)]
pub(super) struct Lanes {
    free: Vec<u32>,
    opened: u32,
    lost: Vec<Lost>,
}

impl Lanes {
    /// A lane for one RESERVE (a free one, or a new one).
    pub(super) fn take(&mut self) -> u32 {
        self.free.pop().unwrap_or_else(|| {
            self.opened += 1;
            self.opened
        })
    }

    /// The RESERVE on `lane` was answered: its receipt is no longer needed.
    pub(super) fn answered(&mut self, lane: u32) {
        self.free.push(lane);
    }

    /// The RESERVE on `lane`, which wrote `score`, got no answer.
    pub(super) fn lose(&mut self, lane: u32, score: f64) {
        self.lost.push(Lost { lane, score });
    }

    /// Takes the free lanes, so that none is reused while their receipts are deleted
    /// (give each back with [`Lanes::answered`]).
    fn take_free(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.free)
    }

    /// Takes every lost receipt (give back what could not be reclaimed with
    /// [`Lanes::keep_lost`]).
    fn take_lost(&mut self) -> Vec<Lost> {
        std::mem::take(&mut self.lost)
    }

    fn keep_lost(&mut self, lost: impl IntoIterator<Item = Lost>) {
        self.lost.extend(lost);
    }

    /// How many receipts are lost.
    #[cfg(test)]
    fn lost(&self) -> usize {
        self.lost.len()
    }
}

/// The longest a receipt is kept: a year (Redis refuses expiry times near `i64::MAX`).
const MAX_RECEIPT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// The receipt's lifetime: the lease (after that the visibility sweep restores the
/// reservations anyway), at least a second and at most [`MAX_RECEIPT_TTL`].
pub(super) fn receipt_ttl_ms(lease: Duration) -> u64 {
    let ttl = lease.clamp(Duration::from_secs(1), MAX_RECEIPT_TTL);
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

impl RedisBroker {
    /// The receipt key of `lane`.
    pub(super) fn receipt_key(&self, lane: u32) -> String {
        self.key(&format!("{RECEIPT_PREFIX}{}.{lane}", self.identity.0))
    }

    /// Puts back what lost RESERVE replies reserved (see the module docs); with none
    /// lost, it only takes the lock. Returns how many messages went back to their queues.
    ///
    /// # Errors
    /// [`BrokerError`] from Redis; the receipts not yet reclaimed stay lost and are
    /// tried again by the next call.
    pub(super) async fn reclaim_lost(&self) -> Result<usize, BrokerError> {
        let lost = self.lock().lanes.take_lost();
        let mut restored = 0;
        for (i, receipt) in lost.iter().enumerate() {
            match self.reclaim(*receipt).await {
                Ok(n) => {
                    restored += n;
                    self.lock().lanes.answered(receipt.lane);
                }
                Err(e) => {
                    self.lock().lanes.keep_lost(lost[i..].iter().copied());
                    return Err(e);
                }
            }
        }
        if restored > 0 {
            tracing::warn!(
                restored,
                "put back jobs reserved by a fetch whose reply was lost"
            );
        }
        Ok(restored)
    }

    /// Deletes the receipts of the lanes no RESERVE is using now (shutdown): each would
    /// otherwise stay in Redis until its lease ends. Those lanes are out of use meanwhile.
    ///
    /// # Errors
    /// [`BrokerError`] from Redis (the receipts then expire with their lease).
    pub(super) async fn drop_receipts(&self) -> Result<(), BrokerError> {
        let free = self.lock().lanes.take_free();
        if free.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = free.iter().map(|lane| self.receipt_key(*lane)).collect();
        let deleted = redis::cmd("DEL")
            .arg(&keys)
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(broker_error);
        let mut state = self.lock();
        for lane in free {
            state.lanes.answered(lane);
        }
        deleted
    }

    /// Reclaims one lost receipt.
    async fn reclaim(&self, lost: Lost) -> Result<usize, BrokerError> {
        let key = self.receipt_key(lost.lane);
        let tags: Vec<String> = redis::cmd("LRANGE")
            .arg(&key)
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn())
            .await
            .map_err(broker_error)?;
        let mut restored = 0;
        for chunk in tags.chunks(super::SWEEP_BATCH) {
            let (entries, scores): (Vec<Option<Vec<u8>>>, Vec<Option<f64>>) = redis::pipe()
                .cmd("HMGET")
                .arg(self.key(keys::UNACKED))
                .arg(chunk)
                .cmd("ZMSCORE")
                .arg(self.key(keys::UNACKED_INDEX))
                .arg(chunk)
                .query_async(&mut self.conn())
                .await
                .map_err(broker_error)?;
            // Still reserved under the score that RESERVE wrote: still ours. `restore`
            // re-checks the score atomically.
            let ours: Vec<(String, String)> = chunk
                .iter()
                .zip(entries.into_iter().zip(scores))
                .filter_map(|(tag, (entry, score))| match (entry, score) {
                    (Some(entry), Some(score)) if score <= lost.score => {
                        Some((tag.clone(), super::entry_text(entry)))
                    }
                    _ => None,
                })
                .collect();
            restored += self.restore(&ours, Some(lost.score)).await?;
        }
        redis::cmd("DEL")
            .arg(&key)
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(broker_error)?;
        Ok(restored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_are_reused_once_answered_and_kept_while_lost() {
        let mut lanes = Lanes::default();
        let (a, b) = (lanes.take(), lanes.take());
        assert_ne!(a, b, "two fetches in flight write two receipts");
        lanes.answered(a);
        assert_eq!(lanes.take(), a, "an answered lane is reused");
        lanes.lose(b, 1.5);
        assert_ne!(
            lanes.take(),
            b,
            "a lost lane is not reused before it is reclaimed"
        );
        assert_eq!(lanes.lost(), 1);
        let lost = lanes.take_lost();
        assert_eq!(
            lost,
            vec![Lost {
                lane: b,
                score: 1.5
            }]
        );
        lanes.keep_lost(lost);
        assert_eq!(lanes.lost(), 1, "what could not be reclaimed stays lost");
        let c = lanes.take();
        lanes.answered(c);
        assert_eq!(lanes.take_free(), vec![c], "only answered lanes are free");
        assert_ne!(
            lanes.take(),
            c,
            "a lane whose receipt is being deleted is not reused"
        );
    }

    #[test]
    fn receipts_live_as_long_as_the_lease_and_at_least_a_second() {
        assert_eq!(receipt_ttl_ms(Duration::from_secs(3600)), 3_600_000);
        assert_eq!(receipt_ttl_ms(Duration::from_millis(5)), 1000);
        assert_eq!(
            receipt_ttl_ms(Duration::MAX),
            MAX_RECEIPT_TTL.as_millis() as u64
        );
    }
}
