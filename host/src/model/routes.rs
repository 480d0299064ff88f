//! The task → queue map a worker publishes into its broker, so a sender with no task
//! files routes a job to a queue that a worker serving its task reads.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::DEFAULT_QUEUE;

/// What one worker (one consume loop: a pool) serves: its queues and its tasks, each
/// with the queue its manifest names (`None`: the sender's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRoutes {
    /// The worker's name and pool (`sprout@host/io`): one entry per consume loop.
    pub worker: String,
    /// The queues it consumes.
    pub queues: Vec<String>,
    /// Task name → the queue its manifest names, if any.
    pub tasks: BTreeMap<String, Option<String>>,
    /// When it was published.
    pub updated_at: DateTime<Utc>,
}

impl WorkerRoutes {
    /// The queue this worker reads jobs for `task` from, if it serves it: the queue
    /// its manifest names when the worker consumes it; else the default queue when
    /// the worker consumes that; else the first queue the worker consumes.
    pub fn queue_for(&self, task: &str) -> Option<&str> {
        let manifest = self.tasks.get(task)?;
        let consumes = |q: &str| self.queues.iter().any(|c| c == q);
        match manifest.as_deref() {
            Some(q) if consumes(q) => Some(q),
            _ if consumes(DEFAULT_QUEUE) => Some(DEFAULT_QUEUE),
            Some(q) => Some(q),
            None => self.queues.first().map(String::as_str),
        }
    }
}

/// The queue to send `task` to by the fleet's published maps: the most recently
/// published entry that serves it decides (`None` when no worker serves it).
pub fn route<'a>(fleet: &'a [WorkerRoutes], task: &str) -> Option<&'a str> {
    fleet
        .iter()
        .filter(|w| w.tasks.contains_key(task))
        .max_by_key(|w| w.updated_at)
        .and_then(|w| w.queue_for(task))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(name: &str, queues: &[&str], tasks: &[(&str, Option<&str>)]) -> WorkerRoutes {
        WorkerRoutes {
            worker: name.into(),
            queues: queues.iter().map(|q| q.to_string()).collect(),
            tasks: tasks
                .iter()
                .map(|(t, q)| (t.to_string(), q.map(str::to_string)))
                .collect(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn routes_to_a_queue_the_serving_worker_reads() {
        let fleet = [
            worker("a", &["mathq"], &[("add", Some("mathq")), ("echo", None)]),
            worker("b", &["celery", "x"], &[("fib", None)]),
        ];
        assert_eq!(route(&fleet, "add"), Some("mathq"));
        assert_eq!(
            route(&fleet, "echo"),
            Some("mathq"),
            "its worker reads only mathq"
        );
        assert_eq!(route(&fleet, "fib"), Some("celery"));
        assert_eq!(route(&fleet, "nope"), None);
    }
}
