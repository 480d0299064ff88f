//! What the job path tells observers: the one seam events (`-E`, [`super::events`]) and
//! metrics ([`super::metrics`]) hang on, so neither adds logic to the job path itself.
//!
//! The worker calls, for each delivery, in this order: [`JobObserver::received`] (the
//! message decoded and reserved), [`JobObserver::eta_wait`] (true, then false) when it
//! waits for its eta, [`JobObserver::started`] just before the pool runs it,
//! [`JobObserver::executed`] when the pool returns, and [`JobObserver::ended`] with how
//! the delivery ends, just before it is handed to the settler. A delivery that never
//! decoded gets only `ended` ([`JobEnd::DeadLettered`] without a job). Jobs stopped by a
//! cold shutdown get no `ended`: they are released for redelivery, not finished.
//!
//! Observers are called inline on the job's task: every method must be cheap and must
//! not block (count, or hand work to a channel).

use std::sync::Arc;

use super::settle::Ending;
use crate::broker::BrokerError;
use crate::model::{Execution, Job, ResultRecord, State};

/// Which broker round trip failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BrokerOp {
    /// Fetching jobs.
    Fetch,
    /// Settling: publishing follow-ups, storing results, acking.
    Settle,
}

impl BrokerOp {
    /// `fetch`, `settle`.
    pub fn name(self) -> &'static str {
        match self {
            BrokerOp::Fetch => "fetch",
            BrokerOp::Settle => "settle",
        }
    }
}

/// How a delivery ends, as observers see it.
#[derive(Debug, Clone, Copy)]
pub enum JobEnd<'a> {
    /// A final state (SUCCESS, FAILURE or REVOKED), with the job's own record.
    Finished {
        /// The job.
        job: &'a Job,
        /// Its final record.
        record: &'a ResultRecord,
    },
    /// The attempt failed and the task runs again (a RETRY record).
    Retried {
        /// The job (this attempt).
        job: &'a Job,
        /// Its RETRY record.
        record: &'a ResultRecord,
    },
    /// Put back without running and without a task retry (a task no file provides yet,
    /// within `--unknown-task-grace`).
    Requeued {
        /// The job.
        job: &'a Job,
    },
    /// The message is dead-lettered: it cannot run at all.
    DeadLettered {
        /// The job, when the message decoded.
        job: Option<&'a Job>,
        /// The message's id, when it could be read.
        id: Option<&'a str>,
        /// Why.
        reason: &'a str,
    },
}

impl JobEnd<'_> {
    /// The task name, or `""` for a message that did not decode.
    pub fn task(&self) -> &str {
        match self {
            JobEnd::Finished { job, .. }
            | JobEnd::Retried { job, .. }
            | JobEnd::Requeued { job } => &job.task,
            JobEnd::DeadLettered { job, .. } => job.map(|j| j.task.as_str()).unwrap_or(""),
        }
    }
}

/// Watches the job path of one consume loop (one pool). All methods default to doing
/// nothing.
pub trait JobObserver: Send + Sync {
    /// A message decoded into `job` and is now reserved by the worker.
    fn received(&self, job: &Job) {
        let _ = job;
    }

    /// `job` starts (`true`) or stops (`false`) waiting for its eta, holding no slot.
    fn eta_wait(&self, job: &Job, waiting: bool) {
        let _ = (job, waiting);
    }

    /// `job` is handed to the pool.
    fn started(&self, job: &Job) {
        let _ = job;
    }

    /// The pool returned `execution` for `job`.
    fn executed(&self, job: &Job, execution: &Execution) {
        let _ = (job, execution);
    }

    /// `job` was stopped while the pool ran it (revoke --terminate): there is no
    /// execution to report; [`JobObserver::ended`] follows with its REVOKED record.
    fn stopped(&self, job: &Job) {
        let _ = job;
    }

    /// How the delivery ends (called just before it is settled).
    fn ended(&self, end: &JobEnd<'_>) {
        let _ = end;
    }

    /// A broker or backend round trip failed (`connection`: the server could not be
    /// reached; it is retried).
    fn broker_error(&self, op: BrokerOp, connection: bool) {
        let _ = (op, connection);
    }

    /// A round trip went through again after connection failures.
    fn reconnected(&self) {}
}

/// The observer that watches nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unobserved;

impl JobObserver for Unobserved {}

/// Several observers, called in order.
#[derive(Default, Clone)]
pub struct Observers(pub Vec<Arc<dyn JobObserver>>);

impl JobObserver for Observers {
    fn received(&self, job: &Job) {
        self.0.iter().for_each(|o| o.received(job));
    }
    fn eta_wait(&self, job: &Job, waiting: bool) {
        self.0.iter().for_each(|o| o.eta_wait(job, waiting));
    }
    fn started(&self, job: &Job) {
        self.0.iter().for_each(|o| o.started(job));
    }
    fn executed(&self, job: &Job, execution: &Execution) {
        self.0.iter().for_each(|o| o.executed(job, execution));
    }
    fn stopped(&self, job: &Job) {
        self.0.iter().for_each(|o| o.stopped(job));
    }
    fn ended(&self, end: &JobEnd<'_>) {
        self.0.iter().for_each(|o| o.ended(end));
    }
    fn broker_error(&self, op: BrokerOp, connection: bool) {
        self.0.iter().for_each(|o| o.broker_error(op, connection));
    }
    fn reconnected(&self) {
        self.0.iter().for_each(|o| o.reconnected());
    }
}

/// What an [`Ending`] of `job` looks like to observers.
pub(crate) fn end_of<'a>(job: &'a Job, ending: &'a Ending) -> Option<JobEnd<'a>> {
    let own = |records: &'a [ResultRecord]| {
        records
            .iter()
            .find(|r| r.id == job.id)
            .or_else(|| records.first())
    };
    match ending {
        Ending::Complete { records, .. } => own(records).map(|record| {
            if record.state == State::Retry {
                JobEnd::Retried { job, record }
            } else {
                JobEnd::Finished { job, record }
            }
        }),
        Ending::Retry { records, .. } => Some(match own(records) {
            Some(record) => JobEnd::Retried { job, record },
            None => JobEnd::Requeued { job },
        }),
        Ending::DeadLetter { reason, .. } => Some(JobEnd::DeadLettered {
            job: Some(job),
            id: Some(&job.id),
            reason,
        }),
        Ending::Release => None,
    }
}

/// The broker-error reporting of [`BrokerError`].
pub(crate) fn report(observer: &dyn JobObserver, op: BrokerOp, error: &BrokerError) {
    observer.broker_error(op, error.is_connection_error());
}
