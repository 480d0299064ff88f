//! `--pool` specs: `NAME=KIND[:CONCURRENCY[:QUEUE,...]][:OPTION=VALUE,...]`.
//!
//! - `io=async:1000` — an async pool of 1000 slots named `io`, consuming queue `io`.
//! - `cpu=prefork:2:cpu,hogs` — two child processes consuming queues `cpu` and `hogs`.
//! - `cpu=prefork:2:max-tasks-per-child=100,child-concurrency=4` — prefork settings for
//!   this pool alone. The options are the worker's prefork flags without their dashes
//!   (`child-concurrency`, `max-tasks-per-child`, `max-memory-per-child`,
//!   `prefork-nice`); a flag given on the command line is the default for every prefork
//!   pool that does not set it. The options segment is the last one, and the only one
//!   with `=` in it, so queues may still be left out.

/// One of a worker's pools, as `--pool` names it (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    /// The pool's name, used in logs and as its default queue.
    pub name: String,
    /// Which kind of pool (aliases resolved by [`PoolKind::parse`]).
    pub kind: PoolKind,
    /// Jobs at once (for prefork: child processes); `None` = the kind's default.
    pub concurrency: Option<usize>,
    /// The queues it consumes (never empty: defaults to the pool's name).
    pub queues: Vec<String>,
    /// Prefork settings of this pool; `None` fields fall back to the worker's flags.
    /// Always empty for an async pool.
    pub prefork: PreforkOptions,
}

use super::PreforkConfig;
use super::prefork::MAX_CHILD_CONCURRENCY;

/// Per-pool prefork settings from a `--pool` spec, or the worker-wide flags. `None` =
/// not given (a spec's falls back to the flag, see [`PreforkOptions::or`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PreforkOptions {
    /// `child-concurrency=K`: jobs each child runs at once (1 to
    /// [`MAX_CHILD_CONCURRENCY`]).
    pub child_concurrency: Option<usize>,
    /// `max-tasks-per-child=N`: recycle a child after N jobs (0 = never, overriding
    /// the flag).
    pub max_tasks_per_child: Option<u64>,
    /// `max-memory-per-child=KiB`: recycle a child past this peak resident size (0 =
    /// never, overriding the flag).
    pub max_memory_per_child: Option<u64>,
    /// `prefork-nice=N`: the children's niceness, 0–19.
    pub nice: Option<i32>,
}

impl PreforkOptions {
    /// Whether no option is set.
    pub fn is_empty(&self) -> bool {
        *self == PreforkOptions::default()
    }

    /// These options, with `defaults` (the worker's flags) for the ones not set.
    pub fn or(self, defaults: PreforkOptions) -> PreforkOptions {
        PreforkOptions {
            child_concurrency: self.child_concurrency.or(defaults.child_concurrency),
            max_tasks_per_child: self.max_tasks_per_child.or(defaults.max_tasks_per_child),
            max_memory_per_child: self.max_memory_per_child.or(defaults.max_memory_per_child),
            nice: self.nice.or(defaults.nice),
        }
    }

    /// Sets a prefork pool's child settings from these options: unset options keep
    /// the config's defaults; 0 for a recycling limit means never; memory is in KiB
    /// (Celery's unit). `mixed`: the worker also runs an async pool, so children
    /// without a niceness run at idle priority ([`PreforkConfig::idle_priority`]).
    pub fn apply(&self, config: &mut PreforkConfig, mixed: bool) {
        if let Some(k) = self.child_concurrency {
            config.child_concurrency = k.max(1);
        }
        if let Some(n) = self.max_tasks_per_child {
            config.max_tasks_per_child = (n > 0).then_some(n);
        }
        if let Some(kib) = self.max_memory_per_child {
            config.max_memory_per_child = (kib > 0).then(|| kib.saturating_mul(1024));
        }
        config.nice = self.nice.unwrap_or(0);
        config.idle_priority = mixed && self.nice.is_none();
    }
}

/// How a pool runs jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolKind {
    /// Many guests on the worker's tokio runtime, preempted by fuel (Celery's eventlet
    /// and gevent pools).
    Async,
    /// Supervised child processes, each running guests (Celery's prefork pool).
    Prefork,
}

impl PoolKind {
    /// Parses a `-P` pool name. `eventlet` and `gevent` are accepted as names of the
    /// async pool and `processes` of prefork, as Celery users type them. `solo` is not
    /// a kind: it is the async pool running one job at a time ([`PoolKind::parse_solo`]).
    ///
    /// # Errors
    /// An unknown pool name (`threads` included: Sprout has no thread pool), with the
    /// known ones.
    pub fn parse(name: &str) -> Result<PoolKind, String> {
        match name {
            "async" | "eventlet" | "gevent" => Ok(PoolKind::Async),
            "prefork" | "processes" => Ok(PoolKind::Prefork),
            other => Err(format!("unknown pool {other:?}: {KNOWN_POOLS}")),
        }
    }

    /// Parses a pool name that may be `solo`: Celery's solo pool runs one job at a
    /// time, so here it is the async pool with a concurrency of 1, returned as
    /// `(Async, Some(1))`; any other name as [`PoolKind::parse`] with no concurrency.
    ///
    /// # Errors
    /// As [`PoolKind::parse`].
    pub fn parse_solo(name: &str) -> Result<(PoolKind, Option<usize>), String> {
        match name {
            "solo" => Ok((PoolKind::Async, Some(1))),
            other => Ok((PoolKind::parse(other)?, None)),
        }
    }

    /// The canonical name: `async` or `prefork`.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolKind::Async => "async",
            PoolKind::Prefork => "prefork",
        }
    }
}

impl std::fmt::Display for PoolKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The pool names `-P` and `--pool` accept, for error messages.
pub const KNOWN_POOLS: &str = "expected async (alias eventlet, gevent), prefork (alias \
                               processes) or solo (the async pool with -c 1)";

const USAGE: &str = "expected NAME=KIND[:CONCURRENCY[:QUEUE,...]][:OPTION=VALUE,...], \
                     e.g. io=async:1000, cpu=prefork:2:cpu,hogs or \
                     cpu=prefork:2:max-tasks-per-child=100";

/// Parses a named pool (see the [module docs](self)).
///
/// # Errors
/// A readable message naming what is wrong.
pub fn parse_pool_spec(text: &str) -> Result<PoolSpec, String> {
    let (name, rest) = text
        .split_once('=')
        .ok_or_else(|| format!("pool {text:?}: {USAGE}"))?;
    let name = name.trim();
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if !valid_name(name) {
        return Err(format!(
            "pool {text:?}: the name must be letters, digits, '-', '_' or '.'; {USAGE}"
        ));
    }
    let mut parts: Vec<&str> = rest.split(':').collect();
    let options = match parts.last() {
        Some(last) if parts.len() > 1 && last.contains('=') => parts.pop(),
        _ => None,
    };
    if parts.len() > 3 {
        return Err(format!("pool {text:?}: too many ':' parts; {USAGE}"));
    }
    let (kind, solo) =
        PoolKind::parse_solo(parts[0].trim()).map_err(|e| format!("pool {text:?}: {e}"))?;
    let concurrency = match parts.get(1).map(|s| s.trim()) {
        None | Some("") => solo,
        Some(n) => match n.parse::<usize>() {
            Ok(1) if solo.is_some() => solo,
            Ok(_) if solo.is_some() => {
                return Err(format!(
                    "pool {text:?}: a solo pool runs one job at a time; give async:{n} for more"
                ));
            }
            Ok(n) if n > 0 => Some(n),
            _ => {
                return Err(format!(
                    "pool {text:?}: concurrency {n:?} is not a positive number; {USAGE}"
                ));
            }
        },
    };
    let queues: Vec<String> = match parts.get(2) {
        None => vec![name.to_string()],
        Some(list) => list.split(',').map(|q| q.trim().to_string()).collect(),
    };
    if queues.iter().any(|q| q.is_empty()) {
        return Err(format!("pool {text:?}: an empty queue name; {USAGE}"));
    }
    for queue in &queues {
        crate::model::check_queue_name(queue).map_err(|e| format!("pool {text:?}: {e}"))?;
    }
    let prefork = match options {
        None => PreforkOptions::default(),
        Some(_) if kind != PoolKind::Prefork => {
            return Err(format!(
                "pool {text:?}: options are prefork settings (child-concurrency, \
                 max-tasks-per-child, max-memory-per-child, prefork-nice); an {kind} pool \
                 takes none"
            ));
        }
        Some(list) => parse_options(list).map_err(|e| format!("pool {text:?}: {e}"))?,
    };
    Ok(PoolSpec {
        name: name.to_string(),
        kind,
        concurrency,
        queues,
        prefork,
    })
}

/// `child-concurrency=4,max-tasks-per-child=100`.
fn parse_options(list: &str) -> Result<PreforkOptions, String> {
    fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, String> {
        value
            .parse()
            .map_err(|_| format!("{key}={value:?} is not a whole number"))
    }
    let mut options = PreforkOptions::default();
    for item in list.split(',') {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("option {item:?} is not KEY=VALUE"))?;
        let (key, value) = (key.trim(), value.trim());
        let fresh = match key {
            "child-concurrency" => {
                let k: usize = number(key, value)?;
                if !(1..=MAX_CHILD_CONCURRENCY).contains(&k) {
                    return Err(format!(
                        "child-concurrency must be from 1 to {MAX_CHILD_CONCURRENCY}, not {k}"
                    ));
                }
                options.child_concurrency.replace(k).is_none()
            }
            "max-tasks-per-child" => options
                .max_tasks_per_child
                .replace(number(key, value)?)
                .is_none(),
            "max-memory-per-child" => options
                .max_memory_per_child
                .replace(number(key, value)?)
                .is_none(),
            "prefork-nice" => {
                let nice: i32 = number(key, value)?;
                if !(0..=19).contains(&nice) {
                    return Err(format!("prefork-nice={nice} is not in 0..=19"));
                }
                options.nice.replace(nice).is_none()
            }
            other => {
                return Err(format!(
                    "unknown option {other:?}: expected child-concurrency, \
                     max-tasks-per-child, max-memory-per-child or prefork-nice"
                ));
            }
        };
        if !fresh {
            return Err(format!("option {key} is given twice"));
        }
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_specs() {
        let spec = parse_pool_spec("io=async:1000").unwrap();
        assert_eq!(
            spec,
            PoolSpec {
                name: "io".into(),
                kind: PoolKind::Async,
                concurrency: Some(1000),
                queues: vec!["io".into()],
                prefork: PreforkOptions::default(),
            }
        );
        let spec = parse_pool_spec("cpu=prefork:2:cpu,hogs").unwrap();
        assert_eq!(spec.kind, PoolKind::Prefork);
        assert_eq!(spec.concurrency, Some(2));
        assert_eq!(spec.queues, ["cpu", "hogs"]);
        assert!(spec.prefork.is_empty());
        let spec = parse_pool_spec("feeds=eventlet").unwrap();
        assert_eq!((spec.kind, spec.concurrency), (PoolKind::Async, None));
        assert_eq!(spec.queues, ["feeds"]);
        let spec = parse_pool_spec("cpu=processes::hogs").unwrap();
        assert_eq!((spec.kind, spec.concurrency), (PoolKind::Prefork, None));
        assert_eq!(spec.queues, ["hogs"]);
        for bad in [
            "async",
            "=async",
            "io=threadz",
            "io=async:0",
            "io=async:x",
            "io=async:1:",
            "io=async:1:a,,b",
            "i o=async",
            "io=async:1:a:b",
        ] {
            assert!(parse_pool_spec(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn prefork_options_in_specs() {
        let spec = parse_pool_spec(
            "cpu=prefork:2:cpu,reports:child-concurrency=4,max-tasks-per-child=100,\
             max-memory-per-child=262144,prefork-nice=5",
        )
        .unwrap();
        assert_eq!(spec.queues, ["cpu", "reports"]);
        assert_eq!(
            spec.prefork,
            PreforkOptions {
                child_concurrency: Some(4),
                max_tasks_per_child: Some(100),
                max_memory_per_child: Some(262_144),
                nice: Some(5),
            }
        );
        // Queues and concurrency may be left out before the options.
        let spec = parse_pool_spec("cpu=prefork:2:max-tasks-per-child=10").unwrap();
        assert_eq!(spec.concurrency, Some(2));
        assert_eq!(spec.queues, ["cpu"]);
        assert_eq!(spec.prefork.max_tasks_per_child, Some(10));
        let spec = parse_pool_spec("cpu=prefork:max-tasks-per-child=0").unwrap();
        assert_eq!(spec.concurrency, None);
        assert_eq!(spec.prefork.max_tasks_per_child, Some(0));
        let spec = parse_pool_spec("cpu=prefork::hogs: prefork-nice = 19 ").unwrap();
        assert_eq!(
            (spec.queues.as_slice(), spec.prefork.nice),
            (&["hogs".to_string()][..], Some(19))
        );

        for (bad, why) in [
            (
                "io=async:100:max-tasks-per-child=10",
                "an async pool takes none",
            ),
            (
                "cpu=prefork:2:max-task-per-child=10",
                "unknown option \"max-task-per-child\"",
            ),
            (
                "cpu=prefork:2:child-concurrency=0",
                "from 1 to 100000, not 0",
            ),
            (
                "cpu=prefork:2:child-concurrency=100001",
                "from 1 to 100000, not 100001",
            ),
            ("cpu=prefork:2:child-concurrency=-1", "not a whole number"),
            (
                "cpu=prefork:2:max-memory-per-child=1M",
                "not a whole number",
            ),
            ("cpu=prefork:2:prefork-nice=20", "not in 0..=19"),
            (
                "cpu=prefork:2:max-tasks-per-child=1,max-tasks-per-child=2",
                "given twice",
            ),
            ("cpu=prefork:2:max-tasks-per-child=1,nice", "not KEY=VALUE"),
            ("cpu=prefork:2:q:r:max-tasks-per-child=1", "too many"),
        ] {
            let err = parse_pool_spec(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
