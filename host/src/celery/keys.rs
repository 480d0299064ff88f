//! Redis key names of kombu's Redis transport and Celery's Redis result backend.
//!
//! These names are the interoperability contract with Python workers and clients
//! (docs/PROTOCOL.md §1): do not change them. A deployment-wide key prefix (kombu's
//! `global_keyprefix`) is applied by the broker and backend, not here.

/// Separator kombu puts between a queue name and its priority step, and inside binding
/// members.
pub const SEP: &str = "\x06\x16";

/// The priority steps kombu keeps one list per (docs/PROTOCOL.md §4).
pub const PRIORITY_STEPS: [u8; 4] = [0, 3, 6, 9];

/// Hash of reserved, not yet acked messages: delivery tag → `[envelope, exchange, rk]`.
pub const UNACKED: &str = "unacked";
/// Sorted set of reserved messages: delivery tag → reservation time (unix seconds).
pub const UNACKED_INDEX: &str = "unacked_index";
/// Lock for the redelivery sweep.
pub const UNACKED_MUTEX: &str = "unacked_mutex";
/// Sprout's dead-letter list (Celery has none on Redis): newest first, capped.
pub const DEAD: &str = "sprout.dead";

/// The largest step of [`PRIORITY_STEPS`] that does not exceed `priority` (clamped to 9).
pub fn priority_step(priority: u8) -> u8 {
    let p = priority.min(9);
    PRIORITY_STEPS
        .iter()
        .copied()
        .rfind(|step| *step <= p)
        .unwrap_or(0)
}

/// The list that holds `queue`'s messages of `priority`: `queue` itself for step 0,
/// `queue` + [`SEP`] + step otherwise (priority 5 → `celery\x06\x163`).
pub fn queue_key(queue: &str, priority: u8) -> String {
    match priority_step(priority) {
        0 => queue.to_string(),
        step => format!("{queue}{SEP}{step}"),
    }
}

/// The queue name of a list key: strips a trailing [`SEP`] + digit.
pub fn queue_of_key(key: &str) -> &str {
    let bytes = key.as_bytes();
    if bytes.len() >= 3
        && bytes[bytes.len() - 1].is_ascii_digit()
        && let Some(stem) = key[..key.len() - 1].strip_suffix(SEP)
    {
        return stem;
    }
    key
}

/// The keys a consumer of `queues` pops from, in the order kombu's BRPOP lists them:
/// bucket-major, then queue. On Redis priority 0 is therefore served first.
pub fn consume_order(queues: &[String]) -> Vec<String> {
    let mut keys = Vec::with_capacity(queues.len() * PRIORITY_STEPS.len());
    for step in PRIORITY_STEPS {
        for q in queues {
            keys.push(queue_key(q, step));
        }
    }
    keys
}

/// The result key (and pub/sub channel) of task `id`: `celery-task-meta-<id>`.
pub fn result_key(id: &str) -> String {
    format!("celery-task-meta-{id}")
}

/// The saved-group key of group `gid`; chord bookkeeping keys add `.j .t .s .d .c`.
pub fn taskset_key(gid: &str) -> String {
    format!("celery-taskset-meta-{gid}")
}

/// The binding set kombu keeps for exchange `exchange` (Celery names a queue's exchange
/// after the queue), and the member that binds `queue` to it with routing key `queue`.
pub fn binding(queue: &str) -> (String, String, String) {
    (
        format!("_kombu.binding.{queue}"),
        format!("_kombu.binding_permanent.{queue}"),
        format!("{queue}{SEP}{SEP}{queue}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_buckets() {
        assert_eq!(queue_key("celery", 0), "celery");
        assert_eq!(queue_key("celery", 2), "celery");
        assert_eq!(queue_key("celery", 5), "celery\x06\x163");
        assert_eq!(queue_key("celery", 7), "celery\x06\x166");
        assert_eq!(queue_key("celery", 200), "celery\x06\x169");
        assert_eq!(queue_of_key("celery\x06\x169"), "celery");
        assert_eq!(queue_of_key("io"), "io");
        assert_eq!(queue_of_key("v2"), "v2");
        let order = consume_order(&["a".into(), "b".into()]);
        assert_eq!(
            order[..3],
            ["a".to_string(), "b".into(), "a\x06\x163".into()]
        );
        assert_eq!(order.len(), 8);
    }
}
