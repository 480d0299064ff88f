//! Task manifests: the `<name>.toml` file beside a `<name>.wasm` task file.
//!
//! A manifest names the tasks a file serves (aliases such as Celery's
//! `proj.tasks.add`), the queue they go to by default, their rate limit, their limits,
//! their retry policy and their capabilities. Unknown keys are errors (a typo must not
//! silently loosen a sandbox). Every key is optional; `docs/manifest.md` is the
//! reference, and a test below parses a manifest using every key it documents.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::time;
use crate::model::{Capabilities, Limits, MAX_JOBS_PER_INSTANCE, SizeUnit};
use crate::rate_limit::RateLimit;

/// The whole manifest file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Extra names for tasks in this file: alias → task name as the file exports it
    /// (`"proj.tasks.add" = "add"`).
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    /// Default queue for jobs of these tasks when the sender names none (checked by
    /// [`crate::model::check_queue_name`]).
    #[serde(default)]
    pub queue: Option<String>,
    /// Most jobs per second, minute or hour (`"10/s"`, `"100/m"`, `"5/h"`, or a number
    /// of jobs per second) that one worker starts, per task of this file. Jobs over the
    /// limit wait (without a pool slot); they are never failed for it. Default: none.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// Resource limits (each defaults to the worker's default).
    #[serde(default)]
    pub limits: LimitsSection,
    /// What happens when a job fails.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// What the sandbox grants beyond computing (deny by default).
    #[serde(default)]
    pub capabilities: Capabilities,
}

/// `[limits]`: raise or lower the defaults for this file's tasks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// CPU budget in fuel units.
    pub fuel: Option<u64>,
    /// Memory cap in MiB.
    pub memory_mib: Option<u64>,
    /// Hard wall-clock limit in seconds.
    pub time_limit: Option<f64>,
    /// Soft wall-clock limit in seconds.
    pub soft_time_limit: Option<f64>,
    /// Result-size cap in KiB.
    pub output_kib: Option<u64>,
    /// Captured stdout/stderr/log cap in KiB.
    pub log_kib: Option<u64>,
    /// Jobs one instance may run before it is dropped (1 to
    /// [`MAX_JOBS_PER_INSTANCE`]; see [`Limits::jobs_per_instance`]). Default: 1.
    pub jobs_per_instance: Option<u32>,
}

impl LimitsSection {
    /// `base` with this section's values applied.
    pub fn apply(&self, base: &Limits) -> Limits {
        let mut limits = base.clone();
        if let Some(fuel) = self.fuel {
            limits.fuel = fuel;
        }
        // The sizes were checked when the manifest was parsed ([`LimitsSection::validate`]).
        if let Some(mib) = self.memory_mib {
            limits.memory_bytes = SizeUnit::Mib.saturating_bytes(mib);
        }
        // Checked when the manifest was parsed ([`LimitsSection::validate`]).
        if let Some(secs) = self.time_limit {
            limits.time_limit = time::saturating_seconds(secs);
        }
        if let Some(secs) = self.soft_time_limit {
            limits.soft_time_limit = Some(time::saturating_seconds(secs));
        }
        if let Some(kib) = self.output_kib {
            limits.output_bytes = SizeUnit::Kib.saturating_bytes(kib);
        }
        if let Some(kib) = self.log_kib {
            limits.log_bytes = SizeUnit::Kib.saturating_bytes(kib);
        }
        // Checked when the manifest was parsed ([`LimitsSection::validate`]).
        if let Some(jobs) = self.jobs_per_instance {
            limits.jobs_per_instance = jobs.clamp(1, MAX_JOBS_PER_INSTANCE);
        }
        limits
    }

    /// Checks the seconds values through [`time::seconds`], the sizes (their bytes
    /// must fit in 64 bits, [`SizeUnit::max_count`]) and `jobs_per_instance` (1 to
    /// [`MAX_JOBS_PER_INSTANCE`]).
    ///
    /// # Errors
    /// A message naming the key and what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        check_seconds("limits", "time_limit", self.time_limit)?;
        check_seconds("limits", "soft_time_limit", self.soft_time_limit)?;
        check_size("memory_mib", self.memory_mib, SizeUnit::Mib)?;
        check_size("output_kib", self.output_kib, SizeUnit::Kib)?;
        check_size("log_kib", self.log_kib, SizeUnit::Kib)?;
        match self.jobs_per_instance {
            Some(jobs) if !(1..=MAX_JOBS_PER_INSTANCE).contains(&jobs) => Err(format!(
                "[limits] jobs_per_instance: {jobs} is out of range: expected 1 (a fresh \
                 instance per job, the default) to {MAX_JOBS_PER_INSTANCE}"
            )),
            _ => Ok(()),
        }
    }
}

/// `[section] key` is a valid number of seconds (finite, zero or more, at most
/// [`time::MAX_SECONDS`]), when given.
fn check_seconds(section: &str, key: &str, value: Option<f64>) -> Result<(), String> {
    match value.map(time::seconds) {
        Some(Err(e)) => Err(format!("[{section}] {key}: {e}")),
        _ => Ok(()),
    }
}

/// `[limits] key`, a size in `unit`, is at most [`SizeUnit::max_count`], when given.
fn check_size(key: &str, value: Option<u64>, unit: SizeUnit) -> Result<(), String> {
    match value {
        Some(count) if unit.to_bytes(count).is_none() => Err(format!(
            "[limits] {key}: {count} is out of range: at most {} (16 EiB)",
            unit.max_count()
        )),
        _ => Ok(()),
    }
}

/// `[retry]`: how failed jobs are retried. A guest's own retry request is honoured up to
/// `max_retries`; other failures are retried only when their kind is listed in
/// `autoretry_for`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Most retries per job (a job's own `max_retries` overrides it). Default: 3.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// First backoff delay in seconds; doubles each retry. Default: 1.
    #[serde(default = "default_backoff")]
    pub backoff: f64,
    /// Longest backoff delay in seconds. Default: 600.
    #[serde(default = "default_backoff_max")]
    pub backoff_max: f64,
    /// Randomise each delay to between half and all of it (avoids thundering herds).
    /// Default: true.
    #[serde(default = "default_true")]
    pub jitter: bool,
    /// Failure kinds retried automatically, e.g. `["ValueError", "TimeLimitExceeded"]`.
    /// Default: none (running out of fuel, trapping etc. are not retried).
    #[serde(default)]
    pub autoretry_for: Vec<String>,
    /// Retry a job whose worker process died while running it (prefork). Default: true.
    #[serde(default = "default_true")]
    pub retry_on_worker_lost: bool,
}

fn default_max_retries() -> u32 {
    3
}
fn default_backoff() -> f64 {
    1.0
}
fn default_backoff_max() -> f64 {
    600.0
}
fn default_true() -> bool {
    true
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: default_max_retries(),
            backoff: default_backoff(),
            backoff_max: default_backoff_max(),
            jitter: true,
            autoretry_for: Vec::new(),
            retry_on_worker_lost: true,
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retries + 1`: exponential, capped, with jitter;
    /// never more than [`time::MAX_SECONDS`].
    pub fn backoff_for(&self, retries: u32) -> Duration {
        let base = self.backoff.max(0.0) * 2f64.powi(retries.min(30) as i32);
        let mut secs = base.min(self.backoff_max.max(0.0));
        if self.jitter {
            secs *= rand::random_range(0.5..=1.0);
        }
        time::saturating_seconds(secs)
    }

    /// Checks `backoff` and `backoff_max` through [`time::seconds`].
    ///
    /// # Errors
    /// A message naming the key and what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        check_seconds("retry", "backoff", Some(self.backoff))?;
        check_seconds("retry", "backoff_max", Some(self.backoff_max))
    }
}

/// A manifest that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ManifestError {
    /// The manifest file.
    pub path: String,
    /// What is wrong, with the line and column for syntax and unknown-key errors.
    pub message: String,
}

impl Manifest {
    /// Reads the manifest at `path`, or the default when there is none.
    ///
    /// # Errors
    /// [`ManifestError`] naming the file and (for TOML errors) the line.
    pub fn load_optional(path: &Path) -> Result<Manifest, ManifestError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Manifest::parse(&text).map_err(|message| ManifestError {
                path: path.display().to_string(),
                message,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Manifest::default()),
            Err(e) => Err(ManifestError {
                path: path.display().to_string(),
                message: e.to_string(),
            }),
        }
    }

    /// Parses manifest text.
    ///
    /// # Errors
    /// A readable message with line and column.
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let manifest: Manifest =
            toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        if let Some(alias) = manifest
            .aliases
            .keys()
            .find(|a| a.trim().is_empty() || a.chars().any(char::is_control))
        {
            return Err(format!(
                "aliases: {alias:?} is not a task name (blank, or with a control character)"
            ));
        }
        if let Some(queue) = &manifest.queue {
            crate::model::check_queue_name(queue).map_err(|e| format!("queue: {e}"))?;
        }
        manifest.limits.validate()?;
        manifest.retry.validate()?;
        manifest.capabilities.validate()?;
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_errors_with_a_line() {
        let err = Manifest::parse("queue = \"q\"\n[limits]\nfuell = 5\n").unwrap_err();
        assert!(err.contains("fuell"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    /// Every seconds value is checked (model::time): the error names the key.
    #[test]
    fn seconds_values_out_of_range_name_their_key() {
        for (text, want) in [
            (
                "[limits]\ntime_limit = inf\n",
                "[limits] time_limit: inf s is not a finite",
            ),
            ("[limits]\ntime_limit = nan\n", "[limits] time_limit: NaN s"),
            (
                "[limits]\nsoft_time_limit = -1\n",
                "[limits] soft_time_limit: -1.0 s is negative",
            ),
            (
                "[limits]\nsoft_time_limit = 1e300\n",
                "[limits] soft_time_limit: 1e300 s is more than",
            ),
            (
                "[retry]\nbackoff = 1e300\n",
                "[retry] backoff: 1e300 s is more than",
            ),
            (
                "[retry]\nbackoff_max = -inf\n",
                "[retry] backoff_max: -inf s",
            ),
            (
                "[capabilities]\nhttp_timeout = 1e300\n",
                "[capabilities] http_timeout: 1e300 s is more than",
            ),
        ] {
            let err = Manifest::parse(text).unwrap_err();
            assert!(err.starts_with(want), "{text:?}: {err}");
        }
        // The largest values allowed still give finite, non-overflowing delays.
        let m = Manifest::parse(
            "[retry]\nbackoff = 3155760000\nbackoff_max = 3155760000\njitter = false\n",
        )
        .unwrap();
        assert_eq!(m.retry.backoff_for(30), time::MAX_DURATION);
    }

    #[test]
    fn http_capabilities_are_validated() {
        let m = Manifest::parse(
            "[capabilities]\nallowed_hosts = [\"http://127.0.0.1:*\"]\nhttp_timeout = 2.5\nhttp_max_response_kib = 64\n",
        )
        .unwrap();
        assert_eq!(m.capabilities.http_timeout, Some(2.5));
        assert_eq!(m.capabilities.http_max_response_kib, Some(64));
        let err =
            Manifest::parse("[capabilities]\nallowed_hosts = [\"example.com\"]\n").unwrap_err();
        assert!(err.contains("allowed_hosts entry \"example.com\""), "{err}");
        // Zero, or so small that it is zero as a duration (then the default would apply).
        for key in ["http_timeout", "tcp_connect_timeout"] {
            for secs in ["0", "1e-300", "4e-10"] {
                let err =
                    Manifest::parse(&format!("[capabilities]\n{key} = {secs}\n")).unwrap_err();
                assert!(
                    err.contains(&format!("{key} must be a positive number of seconds")),
                    "{key} = {secs}: {err}"
                );
            }
            assert!(Manifest::parse(&format!("[capabilities]\n{key} = 1e-9\n")).is_ok());
        }
        let err = Manifest::parse("[capabilities]\nhttp_timout = 1\n").unwrap_err();
        assert!(err.contains("http_timout"), "{err}");
    }

    /// `docs/manifest.md` is the reference of every key. Its complete example must set
    /// every key the code knows (the destructuring below has no `..`: a new field does
    /// not compile until it is added here, and so to the page), and every key must have
    /// a row in the page's tables, and every row must be a real key.
    #[test]
    fn the_reference_page_documents_every_key() {
        let page = include_str!("../../docs/manifest.md");
        let example = page
            .split("<!-- complete-example")
            .nth(1)
            .and_then(|rest| rest.split("```toml\n").nth(1))
            .and_then(|rest| rest.split("```").next())
            .expect("docs/manifest.md has the complete example");
        let manifest = Manifest::parse(example).unwrap_or_else(|e| panic!("{e}"));
        let Manifest {
            aliases,
            queue,
            rate_limit,
            limits,
            retry,
            capabilities,
        } = &manifest;
        assert!(!aliases.is_empty() && queue.is_some() && rate_limit.is_some());
        let LimitsSection {
            fuel,
            memory_mib,
            time_limit,
            soft_time_limit,
            output_kib,
            log_kib,
            jobs_per_instance,
        } = limits;
        assert!(fuel.is_some() && memory_mib.is_some() && time_limit.is_some());
        assert!(soft_time_limit.is_some() && output_kib.is_some() && log_kib.is_some());
        assert!(jobs_per_instance.is_some());
        let RetryPolicy {
            max_retries,
            backoff,
            backoff_max,
            jitter,
            autoretry_for,
            retry_on_worker_lost,
        } = retry;
        let d = RetryPolicy::default();
        assert!(*max_retries != d.max_retries && *backoff != d.backoff);
        assert!(*backoff_max != d.backoff_max && *jitter != d.jitter);
        assert!(!autoretry_for.is_empty() && *retry_on_worker_lost != d.retry_on_worker_lost);
        let Capabilities {
            allowed_hosts,
            http_timeout,
            http_max_response_kib,
            tcp_max_sockets,
            tcp_connect_timeout,
            tcp_max_read_kib,
            tcp_max_write_kib,
            dirs,
            env,
            config,
        } = capabilities;
        assert!(!allowed_hosts.is_empty() && http_timeout.is_some());
        assert!(tcp_max_sockets.is_some() && tcp_connect_timeout.is_some());
        assert!(tcp_max_read_kib.is_some() && tcp_max_write_kib.is_some());
        assert!(http_max_response_kib.is_some() && !dirs.is_empty());
        assert!(!env.is_empty() && !config.is_empty());

        // Every key path the code serialises (all are set) ...
        let value = toml::Value::try_from(&manifest).unwrap();
        let mut keys = std::collections::BTreeSet::new();
        for (key, v) in value.as_table().unwrap() {
            match (key.as_str(), v) {
                ("limits" | "retry" | "capabilities", toml::Value::Table(section)) => {
                    keys.extend(section.keys().map(|k| format!("{key}.{k}")))
                }
                _ => {
                    keys.insert(key.clone());
                }
            }
        }
        // ... and every key with a row in the page's tables.
        let rows: std::collections::BTreeSet<String> = page
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .map(str::to_string)
            .collect();
        assert_eq!(
            keys, rows,
            "docs/manifest.md tables vs the keys of Manifest"
        );
    }

    /// An alias is a task name jobs are sent with: a blank one, or one with a control
    /// character, is refused.
    #[test]
    fn blank_aliases_are_refused() {
        for alias in ["", " ", "a\\nb"] {
            let err =
                Manifest::parse(&format!("aliases = {{ \"{alias}\" = \"add\" }}\n")).unwrap_err();
            assert!(err.starts_with("aliases: "), "{alias:?}: {err}");
        }
        assert!(Manifest::parse("aliases = { \"proj.tasks.add\" = \"add\" }\n").is_ok());
    }

    /// The default queue follows the one rule for queue names: empty, over 255 bytes or
    /// with a control character is refused naming the key.
    #[test]
    fn the_queue_is_a_valid_queue_name() {
        let long = "q".repeat(256);
        for (text, want) in [
            ("", "cannot be empty"),
            (long.as_str(), "is 256 bytes: at most 255"),
            ("a\\u0000b", "control character"),
            ("a\\nb", "control character"),
        ] {
            let err = Manifest::parse(&format!("queue = \"{text}\"\n")).unwrap_err();
            assert!(
                err.starts_with("queue: ") && err.contains(want),
                "{text:?}: {err}"
            );
        }
        let ok = "q".repeat(255);
        assert_eq!(
            Manifest::parse(&format!("queue = \"{ok}\"\n"))
                .unwrap()
                .queue,
            Some(ok)
        );
    }

    /// A size whose bytes would not fit in 64 bits is refused naming the key, instead of
    /// wrapping round to a small (or zero) limit; the largest that fits is kept exactly.
    #[test]
    fn sizes_whose_bytes_overflow_are_refused_naming_the_key() {
        for (key, unit) in [
            ("memory_mib", SizeUnit::Mib),
            ("output_kib", SizeUnit::Kib),
            ("log_kib", SizeUnit::Kib),
        ] {
            let max = unit.max_count();
            // (TOML integers are 64-bit signed: every count here is below i64::MAX.)
            for over in [max + 1, 1 << 44, 1 << 54, i64::MAX as u64] {
                if unit.to_bytes(over).is_some() {
                    continue;
                }
                let err = Manifest::parse(&format!("[limits]\n{key} = {over}\n")).unwrap_err();
                assert!(
                    err.contains(&format!("[limits] {key}: {over} is out of range")),
                    "{key} = {over}: {err}"
                );
            }
            let m = Manifest::parse(&format!("[limits]\n{key} = {max}\n")).unwrap();
            let limits = m.limits.apply(&Limits::default());
            let bytes = match key {
                "memory_mib" => limits.memory_bytes,
                "output_kib" => limits.output_bytes,
                _ => limits.log_bytes,
            };
            assert_eq!(bytes, max * unit.bytes(), "{key}");
        }
    }

    /// `jobs_per_instance` is 1 to the ceiling; 0, above the ceiling, negative or a
    /// fraction is refused naming the key.
    #[test]
    fn jobs_per_instance_is_validated() {
        let m = Manifest::parse("[limits]\njobs_per_instance = 100\n").unwrap();
        assert_eq!(m.limits.apply(&Limits::default()).jobs_per_instance, 100);
        assert_eq!(Limits::default().jobs_per_instance, 1);
        let m = Manifest::parse("[limits]\njobs_per_instance = 1\n").unwrap();
        assert_eq!(m.limits.apply(&Limits::default()).jobs_per_instance, 1);
        for (text, want) in [
            (
                "0",
                "[limits] jobs_per_instance: 0 is out of range: expected 1",
            ),
            (
                "100001",
                "[limits] jobs_per_instance: 100001 is out of range",
            ),
            ("-1", "jobs_per_instance"),
            ("2.5", "jobs_per_instance"),
            ("\"10\"", "jobs_per_instance"),
            ("nan", "jobs_per_instance"),
            ("inf", "jobs_per_instance"),
            ("1e300", "jobs_per_instance"),
            ("4294967297", "jobs_per_instance"),
        ] {
            let err =
                Manifest::parse(&format!("[limits]\njobs_per_instance = {text}\n")).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn applies_limits_and_retry_policy() {
        let m = Manifest::parse(
            "aliases = { \"proj.add\" = \"add\" }\n[limits]\nmemory_mib = 8\ntime_limit = 2.5\n[retry]\nmax_retries = 1\njitter = false\n",
        )
        .unwrap();
        let limits = m.limits.apply(&Limits::default());
        assert_eq!(limits.memory_bytes, 8 << 20);
        assert_eq!(limits.time_limit, Duration::from_millis(2500));
        assert_eq!(m.retry.max_retries, 1);
        assert_eq!(m.retry.backoff_for(0), Duration::from_secs(1));
        assert_eq!(m.retry.backoff_for(3), Duration::from_secs(8));
        assert_eq!(m.aliases["proj.add"], "add");
    }
}
