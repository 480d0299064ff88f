//! `sprout send TASK [ARGS]`: enqueue jobs (optionally many, optionally waiting).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::args::SendArgs;
use sprout::backend;
use sprout::client::Client;
use sprout::manifest::Manifest;
use sprout::model::State;
use sprout::model::time;
use sprout::model::{Job, LimitOverrides, SizeUnit};
use sprout::registry::{manifest_path, task_files};

use super::{EXIT_NOT_READY, EXIT_TASK_FAILED, EXIT_USAGE, ExitError};

/// Jobs published per broker call with `--count`.
const SEND_BATCH: usize = 1000;

/// Runs the command: prints each job id (or, with `--wait`, each result).
///
/// # Errors
/// Bad arguments or an unreachable broker.
pub async fn run(args: SendArgs) -> anyhow::Result<ExitCode> {
    super::check_task_paths("--tasks", &args.tasks)?;
    let mut template = build_job(&args)?;
    let client = Client::connect_with(&args.broker.broker, &args.broker.connect_options(None))
        .await
        .with_context(|| format!("cannot open broker {}", args.broker.broker))?;
    if args.queue.is_none() && manifest_queue(&args.task, &args.tasks).is_none() {
        // No -q and no local manifest: the queue a worker serving the task reads.
        match client.broker().routes().await {
            Ok(fleet) => {
                if let Some(queue) = sprout::model::routes::route(&fleet, &args.task) {
                    tracing::debug!("{}: queue {queue} from the workers' routes", args.task);
                    template.queue = queue.to_string();
                }
            }
            Err(e) => tracing::warn!(
                "cannot read the workers' routes ({e}); sending to {}",
                template.queue
            ),
        }
    }
    let count = args.count.max(1);
    // The ids are printed (up to 20) or waited on; a long run of `--count` without
    // `--wait` keeps none, so its memory stays flat however many it sends.
    let keep_ids = args.wait || count <= 20;
    let mut ids = Vec::with_capacity(if keep_ids {
        count.min(1_000_000) as usize
    } else {
        0
    });
    let progress = (count > 1).then(|| {
        let bar = ProgressBar::new(count);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} jobs  {per_sec}  eta {eta}")
                .expect("valid template"),
        );
        bar
    });
    let started = std::time::Instant::now();
    let mut sent = 0u64;
    while sent < count {
        let n = (count - sent).min(SEND_BATCH as u64) as usize;
        let batch: Vec<Job> = (0..n)
            .map(|_| {
                let mut job = template.clone();
                if count > 1 {
                    job.id = uuid::Uuid::new_v4().to_string();
                }
                job
            })
            .collect();
        client.send_many(&batch).await?;
        if keep_ids {
            ids.extend(batch.into_iter().map(|j| j.id));
        }
        sent += n as u64;
        if let Some(bar) = &progress {
            bar.set_position(sent);
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();
        crate::errln!(
            "sent {count} jobs in {secs:.3} s ({:.0} jobs/s)",
            count as f64 / secs.max(1e-9)
        );
    }
    if !args.wait {
        if count <= 20 {
            for id in &ids {
                crate::outln!("{id}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let timeout = args.timeout;
    let mut failed = 0;
    let mut timed_out = 0;
    // One job: wait on it (pub/sub or file watch where the backend has them). Many: poll
    // them in windows against one deadline for all, not `timeout` each.
    let records = if let [id] = ids.as_slice() {
        // A record stored but unreadable ends this job like the many-job path does
        // (counted as failed, named); any other error (the connection) ends the command.
        let read = async { backend::lookup(client.wait(id, timeout).await) };
        vec![super::until_interrupted(read).await?]
    } else {
        super::until_interrupted(client.wait_many(&ids, timeout)).await?
    };
    for (id, record) in ids.iter().zip(records) {
        let record = match record {
            Ok(record) => record.filter(|r| r.state.is_terminal()),
            Err(e) => {
                // Its result was stored but cannot be read back: not a success, and
                // waiting longer would read the same bytes.
                failed += 1;
                crate::errln!("{id}: {e}");
                continue;
            }
        };
        match record {
            Some(r) if r.state == State::Success => {
                if count == 1 {
                    crate::outln!("{}", r.result.unwrap_or_default());
                }
            }
            Some(r) => {
                failed += 1;
                let err = r
                    .error
                    .map(|e| format!("{}: {}", e.kind, e.message))
                    .unwrap_or_default();
                crate::errln!("{id} {}: {err}", r.state);
            }
            None => {
                timed_out += 1;
                crate::errln!(
                    "{id}: timed out waiting: no result within {:.1} s",
                    timeout.as_secs_f64()
                );
            }
        }
    }
    if count > 1 {
        crate::errln!(
            "{} succeeded, {failed} failed, {timed_out} timed out",
            ids.len() - failed - timed_out
        );
    }
    Ok(if failed > 0 {
        ExitCode::from(EXIT_TASK_FAILED)
    } else if timed_out > 0 {
        ExitCode::from(EXIT_NOT_READY)
    } else {
        ExitCode::SUCCESS
    })
}

fn build_job(args: &SendArgs) -> anyhow::Result<Job> {
    let mut job = Job::new(
        args.task.clone(),
        super::parse_args(&args.call.args)?,
        super::parse_kwargs(&args.call.kwargs)?,
    );
    if let Some(queue) = args
        .queue
        .clone()
        .or_else(|| manifest_queue(&args.task, &args.tasks))
    {
        job.queue = queue;
    }
    // Checked by its parser: 0–9.
    job.priority = args.priority;
    job.max_retries = args.retries;
    // The flags were checked by their parser (model::time): at most MAX_SECONDS.
    let now = Utc::now();
    let after = |flag: &str, d: Duration| {
        time::eta_after(now, d).map_err(|e| ExitError::new(EXIT_USAGE, format!("{flag}: {e}")))
    };
    if let Some(countdown) = args.countdown {
        job.eta = Some(after("--countdown", countdown)?);
    }
    if let Some(eta) = args.eta {
        job.eta = Some(eta);
    }
    if let Some(expires) = args.expires {
        job.expires = Some(after("--expires", expires)?);
    }
    job.limits = LimitOverrides {
        fuel: args.fuel,
        memory_bytes: args.memory.map(|mib| SizeUnit::Mib.saturating_bytes(mib)),
        time_limit: args.time_limit.map(|d| d.as_secs_f64()),
        ..Default::default()
    };
    Ok(job)
}

/// The default queue a task's manifest gives it, read the cheap way: only the `.toml`
/// manifests beside the `*.wasm` files under `paths` are parsed, no wasm is compiled.
///
/// A manifest speaks for `task` when its file stem is the task name (`fib.wasm` →
/// `fib`), or the task is one of its aliases, or the target of one (`math.toml`'s
/// `"tasks.add" = "add"` covers both `tasks.add` and `add`). The first such file, in the
/// worker's load order, decides; `None` when it sets no `queue` or no file matches (the
/// job then goes to the default queue). A task of a multi-task file with neither an
/// alias nor the file's name is not found: give it an alias to route it.
pub fn manifest_queue(task: &str, paths: &[PathBuf]) -> Option<String> {
    for file in task_files(paths) {
        let manifest_file = manifest_path(&file);
        let by_stem = file.file_stem().is_some_and(|stem| stem == task);
        if !by_stem && !manifest_file.is_file() {
            continue;
        }
        let manifest = match Manifest::load_optional(&manifest_file) {
            Ok(manifest) => manifest,
            Err(e) => {
                tracing::warn!("ignoring a manifest for routing: {e}");
                continue;
            }
        };
        let by_alias = manifest.aliases.contains_key(task)
            || manifest.aliases.values().any(|target| target == task);
        if by_stem || by_alias {
            if let Some(queue) = &manifest.queue {
                tracing::debug!("{task}: queue {queue} from {}", manifest_file.display());
            }
            return manifest.queue;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_stem_alias_and_alias_target() {
        let dir = tempfile::tempdir().unwrap();
        let put = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        put("hog.wasm", "");
        put("hog.toml", "queue = \"cpu\"\n");
        put("math.wasm", "");
        put(
            "math.toml",
            "queue = \"calc\"\naliases = { \"tasks.add\" = \"add\" }\n",
        );
        put("echo.wasm", "");
        put("orphan.toml", "queue = \"nowhere\"\n");
        let paths = [dir.path().to_path_buf()];
        assert_eq!(manifest_queue("hog", &paths).as_deref(), Some("cpu"));
        assert_eq!(manifest_queue("tasks.add", &paths).as_deref(), Some("calc"));
        assert_eq!(manifest_queue("add", &paths).as_deref(), Some("calc"));
        assert_eq!(manifest_queue("mul", &paths), None);
        assert_eq!(manifest_queue("echo", &paths), None);
        assert_eq!(
            manifest_queue("orphan", &paths),
            None,
            "a manifest needs its wasm"
        );
        assert_eq!(manifest_queue("hog", &[dir.path().join("missing")]), None);
    }
}
