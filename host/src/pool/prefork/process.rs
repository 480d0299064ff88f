//! Process plumbing for the prefork parent: a long-lived spawner thread, and readable
//! exit statuses.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// Spawns children from one dedicated thread that lives as long as the pool.
///
/// Why a thread: a child arms `PR_SET_PDEATHSIG`, and Linux delivers that signal when
/// the *thread* that spawned the child exits, not the process. Tokio's blocking threads
/// come and go, so a child spawned from one could be killed at a random later moment;
/// this thread only ends when the pool is dropped (and then the children should go).
#[derive(Debug)]
pub(super) struct Spawner {
    requests: std::sync::mpsc::Sender<SpawnRequest>,
}

struct SpawnRequest {
    command: Command,
    reply: oneshot::Sender<io::Result<Child>>,
}

impl Spawner {
    /// Starts the thread, inside the current tokio runtime's context (child processes
    /// are reaped by that runtime).
    pub(super) fn new() -> io::Result<Spawner> {
        let handle = tokio::runtime::Handle::current();
        let (requests, incoming) = std::sync::mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("sprout-prefork-spawner".into())
            .spawn(move || {
                let _runtime = handle.enter();
                for mut request in incoming {
                    let _ = request.reply.send(request.command.spawn());
                }
            })?;
        Ok(Spawner { requests })
    }

    /// Spawns `command` on the spawner thread.
    ///
    /// # Errors
    /// The spawn failed, or the spawner thread is gone.
    pub(super) async fn spawn(&self, command: Command) -> io::Result<Child> {
        let (reply, result) = oneshot::channel();
        self.requests
            .send(SpawnRequest { command, reply })
            .map_err(|_| io::Error::other("the prefork spawner thread stopped"))?;
        result
            .await
            .map_err(|_| io::Error::other("the prefork spawner thread stopped"))?
    }
}

/// `signal 9 (SIGKILL)`, `exit status 101`.
pub(super) fn describe_exit(status: ExitStatus) -> String {
    if let Some(signal) = status.signal() {
        let core = if status.core_dumped() {
            ", core dumped"
        } else {
            ""
        };
        return format!("signal {signal} ({}{core})", signal_name(signal));
    }
    match status.code() {
        Some(code) => format!("exit status {code}"),
        None => status.to_string(),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => "unknown signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_read_well() {
        assert_eq!(describe_exit(ExitStatus::from_raw(9)), "signal 9 (SIGKILL)");
        assert_eq!(
            describe_exit(ExitStatus::from_raw(6 | 0x80)),
            "signal 6 (SIGABRT, core dumped)"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(101 << 8)),
            "exit status 101"
        );
    }
}
