//! Publishing the task → queue map a worker serves into its broker
//! ([`Broker::publish_routes`]), so `sprout send NAME` on a machine without the task
//! files routes to a queue this worker reads, and `sprout tasks --broker` lists the
//! fleet.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;

use super::Shutdown;
use crate::broker::Broker;
use crate::model::WorkerRoutes;
use crate::registry::Registry;

/// How often the registry is checked for a reload (the map is published only when it
/// changed, and again after a failed write).
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// The map `registry` serves now, for a worker named `worker` consuming `queues`.
pub fn current(registry: &Registry, worker: &str, queues: &[String]) -> WorkerRoutes {
    WorkerRoutes {
        worker: worker.to_string(),
        queues: queues.to_vec(),
        tasks: registry
            .snapshot()
            .iter()
            .map(|(name, entry)| (name.clone(), entry.manifest.queue.clone()))
            .collect(),
        updated_at: Utc::now(),
    }
}

/// Publishes the map when the worker starts and whenever the registry reloads, until
/// `shutdown` leaves [`Shutdown::Running`]; then withdraws it.
///
/// # Cancel safety
/// Dropping it leaves the last published map in the broker (it is replaced when a
/// worker of the same name starts again).
pub async fn publish(
    broker: Arc<dyn Broker>,
    registry: Arc<Registry>,
    worker: String,
    queues: Vec<String>,
    mut shutdown: watch::Receiver<Shutdown>,
) {
    let mut published: Option<WorkerRoutes> = None;
    loop {
        let now = current(&registry, &worker, &queues);
        if published
            .as_ref()
            .is_none_or(|last| last.tasks != now.tasks)
        {
            match broker.publish_routes(&now).await {
                Ok(()) => published = Some(now),
                Err(e) => tracing::warn!("could not publish the task routes: {e}"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(CHECK_EVERY) => {}
            _ = shutdown.wait_for(|s| *s != Shutdown::Running) => break,
        }
    }
    if let Err(e) = broker.withdraw_routes(&worker).await {
        tracing::debug!("could not withdraw the task routes: {e}");
    }
}
