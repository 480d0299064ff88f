//! Deny by default: what a guest gets when it reaches for something its manifest did
//! not grant, and where the host can see (and log) the attempt.
//!
//! | the guest tries to          | it gets                                   | logged by the host |
//! |-----------------------------|-------------------------------------------|--------------------|
//! | create a TCP socket, no `tcp://` grant | `access-denied` from `wasi:sockets` | yes, with task and job id |
//! | create a UDP socket         | `access-denied` from `wasi:sockets` (never granted) | yes, with task and job id |
//! | resolve a host name (DNS) no `tcp://` pattern names | `access-denied` from `ip-name-lookup` | yes, with the name |
//! | connect or bind an address not granted | `access-denied` (the address check) | yes, with the address |
//! | open a file, no grant       | "not found"/`EBADF`: there is no preopened directory to open it under | no: the call never reaches the host |
//! | escape a granted directory (`..`, an absolute symlink, a symlink out) | `not-permitted`/`EPERM` from wasmtime-wasi's capability checks | no (inside wasmtime-wasi) |
//! | write into a granted directory | `read-only`/`EBADF` (directories are read-only) | no (inside wasmtime-wasi) |
//! | read an env var not granted | "not present": the guest's environment holds only what was granted | no: the guest reads a list the host gave it |
//! | outgoing HTTP to a host not in `allowed_hosts` | `HTTP-request-denied` | yes (`sandbox::http`) |
//!
//! Sockets are the one raw network door WASI p2 has. Without a `tcp://` grant they are
//! disabled in the WASI context (`allow_tcp/udp/ip_name_lookup(false)`), and the
//! socket-creating and name-resolving functions, shadowed in the linker
//! ([`super::sockets`] for TCP and DNS, [`shadow_sockets`] here for UDP), log the attempt
//! and return `access-denied` without creating an OS socket (so a guest cannot use up the
//! worker's file descriptors either). The address check installed on those contexts
//! ([`deny_sockets`]) logs and refuses too: it is the backstop. A `tcp://` grant opens
//! exactly what [`super::sockets`] describes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::UdpSocket;
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpAddressFamily};
use wasmtime_wasi::sockets::SocketAddrUse;

use super::component::ComponentState;

/// The `wasi:sockets` version wasmtime-wasi 48 defines; guests importing any 0.2.x
/// version resolve to it (semver matching), so shadowing this one covers them all.
const SOCKETS_VERSION: &str = super::sockets::WASI_VERSION;

/// Disables raw sockets and DNS in a WASI context and installs an address check that
/// logs and refuses every use (with the job and task, so an operator can see who tried).
pub fn deny_sockets(builder: &mut WasiCtxBuilder, job_id: &str, task: &str) {
    deny_sockets_labelled(builder, JobLabel::new(job_id, task));
}

/// [`deny_sockets`] for a context that serves several jobs in turn (instance reuse):
/// the log line names whichever job `label` names at the time.
pub fn deny_sockets_labelled(builder: &mut WasiCtxBuilder, label: JobLabel) {
    builder
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(move |addr: SocketAddr, usage: SocketAddrUse| {
            let (job_id, task) = label.get();
            tracing::warn!(job = %job_id, task = %task, "denied: socket {usage:?} {addr} (no network capability)");
            Box::pin(async { false })
        });
}

/// The job (id, task) a WASI context's socket backstop names; shared, so a reused
/// instance's context names the job it runs now.
#[derive(Clone, Default)]
pub struct JobLabel(Arc<Mutex<(String, String)>>);

impl JobLabel {
    /// A label naming `job_id` of `task`.
    pub fn new(job_id: &str, task: &str) -> Self {
        JobLabel(Arc::new(Mutex::new((job_id.to_string(), task.to_string()))))
    }

    /// Names `job_id` of `task` from now on.
    pub fn set(&self, job_id: &str, task: &str) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = (job_id.to_string(), task.to_string());
    }

    /// The job id and task named now.
    pub fn get(&self) -> (String, String) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Replaces `create-udp-socket` in a component linker (after WASI p2 was added to it)
/// with a function that logs the attempt with the job's task and id and returns
/// `access-denied` (TCP and DNS: [`super::sockets::add_to_linker`]).
///
/// # Errors
/// The linker rejects the definitions (a wasmtime-wasi upgrade changed the names).
pub fn shadow_sockets(linker: &mut Linker<ComponentState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let result = shadow(linker);
    linker.allow_shadowing(false);
    result
}

fn shadow(linker: &mut Linker<ComponentState>) -> wasmtime::Result<()> {
    let v = SOCKETS_VERSION;
    linker
        .instance(&format!("wasi:sockets/udp-create-socket@{v}"))?
        .func_wrap(
            "create-udp-socket",
            |store: StoreContextMut<'_, ComponentState>, (family,): (IpAddressFamily,)| {
                log_denial(store.data(), &format!("open a UDP socket ({family:?})"));
                Ok((Err::<Resource<UdpSocket>, _>(ErrorCode::AccessDenied),))
            },
        )?;
    Ok(())
}

pub(crate) fn log_denial(state: &ComponentState, what: &str) {
    tracing::warn!(
        job = %state.job.id,
        task = %state.job.task,
        "denied: the guest tried to {what}; its manifest grants no raw network access \
         (TCP needs a tcp://host:port pattern in [capabilities] allowed_hosts)"
    );
}
