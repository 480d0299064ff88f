//! Guest TCP sockets (`wasi:sockets`), granted narrowly by `tcp://host:port` patterns in
//! a task's `allowed_hosts`, and bounded per job. See `docs/sockets.md`.
//!
//! **Where the checks live.** wasmtime-wasi 48 implements the sockets themselves (the OS
//! socket, the non-blocking connect, the streams) and offers one hook, the per-context
//! *socket address check*. Everything else is done by *shadowing* a few `wasi:sockets`
//! and `wasi:io/poll` functions in the component linker with functions that do Sprout's
//! bookkeeping and then call wasmtime-wasi's own implementation (public trait methods):
//!
//! | guest call | Sprout adds |
//! |---|---|
//! | `create-tcp-socket` | denied (and logged) without a `tcp://` grant; the per-job socket bound (`new-socket-limit`) |
//! | `resolve-addresses` | DNS only for a name some `tcp://` pattern names; else `access-denied` |
//! | `resolve-next-address` | remembers which granted name each address came from |
//! | the address check (bind, connect, listen, accept, UDP) | connect only to a granted address: an IP literal of a pattern, or an address a granted name resolved to *in this job*, on a granted port; implicit binds only; no listen, accept or UDP |
//! | `start-connect` / `subscribe` / `poll` / `pollable.block` / `finish-connect` | the connect timeout: a guest blocked on a connecting socket wakes at the deadline and `finish-connect` says `timeout` |
//! | `finish-connect` | the connection's two streams are wrapped to count bytes against the job's read and write bounds |
//!
//! Every denial is logged with the job id and task and reaches the guest at once as an
//! error code (`access-denied`, `new-socket-limit`, `timeout`): nothing hangs.
//!
//! **Async.** wasmtime-wasi's sockets are tokio sockets: a guest blocked in a read, a
//! write or a connect is a parked future (no thread), exactly like a guest in `sleep`.
//!
//! **Closed when the job ends.** Sockets and their streams live in the job's
//! `ResourceTable`, which is dropped with the store whatever the outcome (success, guest
//! error, trap, out of fuel, time limit, revoke): dropping closes the OS sockets.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{
    Host as _, HostResolveAddressStream as _, ResolveAddressStream,
};
use wasmtime_wasi::p2::bindings::sockets::network::{
    ErrorCode, IpAddress, IpAddressFamily, IpSocketAddress, Network,
};
use wasmtime_wasi::p2::bindings::sockets::tcp::HostTcpSocket as TcpHost;
use wasmtime_wasi::p2::bindings::sockets::tcp_create_socket::Host as _;
use wasmtime_wasi::p2::pipe::{ClosedInputStream, ClosedOutputStream};
use wasmtime_wasi::p2::{
    DynInputStream, DynOutputStream, DynPollable, InputStream, OutputStream, Pollable, SocketError,
    StreamError, StreamResult, TcpSocket,
};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi_io::bindings::wasi::io::poll::{Host as _, HostPollable as _};

use super::component::ComponentState;
use crate::model::capabilities::{
    TCP_DEFAULT_CONNECT_TIMEOUT_SECS, TCP_DEFAULT_MAX_BYTES_KIB, TCP_DEFAULT_MAX_SOCKETS,
    TCP_MAX_BYTES_CEILING_KIB, TCP_MAX_SOCKETS_CEILING, normalise_host,
};
use crate::model::time;
use crate::model::{AllowList, Capabilities, HostPattern};

/// The `wasi:sockets` and `wasi:io` version wasmtime-wasi 48 defines; guests importing
/// any 0.2.x version resolve to it (semver matching), so shadowing it covers them all.
pub(crate) const WASI_VERSION: &str = "0.2.12";

/// A job's TCP grant and bounds, shared by the address check (which runs inside
/// wasmtime-wasi's connect future) and the shadowed functions.
struct Grant {
    allow: AllowList,
    job_id: String,
    task: String,
    max_sockets: usize,
    connect_timeout: Duration,
    max_read: u64,
    max_write: u64,
    read: AtomicU64,
    written: AtomicU64,
    /// Address → the granted names (normalised) it was resolved from in this job.
    resolved: Mutex<HashMap<IpAddr, Vec<String>>>,
}

impl Grant {
    /// The socket address check (wasmtime-wasi's hook): connect only to a granted
    /// address; implicit binds only; nothing else.
    fn check(&self, addr: SocketAddr, usage: SocketAddrUse) -> bool {
        let allowed = match usage {
            // wasmtime-wasi checks the implicit bind of a connect with the wildcard
            // address and port 0; an explicit bind to anything else is refused.
            SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
            SocketAddrUse::TcpConnect => {
                let names = self
                    .resolved
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&addr.ip().to_canonical())
                    .cloned()
                    .unwrap_or_default();
                self.allow.tcp_allows(addr, &names)
            }
            SocketAddrUse::TcpListen
            | SocketAddrUse::TcpAccept
            | SocketAddrUse::UdpBind
            | SocketAddrUse::UdpSend
            | SocketAddrUse::UdpReceive => false,
        };
        if !allowed {
            let why = match usage {
                SocketAddrUse::TcpConnect => {
                    "no tcp:// pattern in allowed_hosts grants it (a name pattern grants \
                     only the addresses its name resolved to in this job)"
                }
                SocketAddrUse::TcpBind => "only the implicit bind of a connect is allowed",
                _ => "tasks may only connect out over TCP",
            };
            tracing::warn!(job = %self.job_id, task = %self.task, "sockets: denied {usage:?} {addr}: {why}");
        }
        allowed
    }

    fn deny(&self, what: &str) {
        tracing::warn!(job = %self.job_id, task = %self.task, "sockets: denied {what}");
    }
}

/// Per-job socket state in the store: the grant (if any) and the bookkeeping of the
/// shadowed functions. Default: no grant, every socket and lookup denied.
#[derive(Default)]
pub struct SocketPolicy {
    grant: Option<Arc<Grant>>,
    /// Reps of the TCP sockets this job created (pruned of closed ones when counted).
    sockets: HashSet<u32>,
    /// Resolve-stream rep → the name being resolved (normalised).
    lookups: HashMap<u32, String>,
    /// Socket rep → connect deadline, while a connect is in progress.
    connecting: HashMap<u32, Instant>,
    /// Pollable rep → the connecting socket it was subscribed to.
    pollables: HashMap<u32, u32>,
}

impl SocketPolicy {
    /// The policy a manifest grants one job: `None`-like (deny everything) unless
    /// `allowed_hosts` has a `tcp://` pattern. Bounds out of range (only hand-built
    /// capabilities have them: manifests are validated) fall back to the defaults.
    pub fn new(capabilities: &Capabilities, job_id: &str, task: &str) -> SocketPolicy {
        if !capabilities.grants_tcp() {
            return SocketPolicy::default();
        }
        let patterns = capabilities
            .allowed_hosts
            .iter()
            .filter_map(|p| match HostPattern::parse(p) {
                Ok(p) if p.is_tcp() => Some(p),
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(job = %job_id, task = %task, "ignoring {e}");
                    None
                }
            })
            .collect();
        let kib = |v: Option<u64>| {
            v.filter(|k| (1..=TCP_MAX_BYTES_CEILING_KIB).contains(k))
                .unwrap_or(TCP_DEFAULT_MAX_BYTES_KIB)
                .saturating_mul(1024)
        };
        let grant = Grant {
            allow: AllowList::from_patterns(patterns),
            job_id: job_id.to_string(),
            task: task.to_string(),
            max_sockets: capabilities
                .tcp_max_sockets
                .filter(|n| (1..=TCP_MAX_SOCKETS_CEILING).contains(n))
                .unwrap_or(TCP_DEFAULT_MAX_SOCKETS) as usize,
            connect_timeout: capabilities
                .tcp_connect_timeout
                .and_then(|s| time::seconds(s).ok())
                .filter(|d| !d.is_zero())
                .unwrap_or(Duration::from_secs_f64(TCP_DEFAULT_CONNECT_TIMEOUT_SECS)),
            max_read: kib(capabilities.tcp_max_read_kib),
            max_write: kib(capabilities.tcp_max_write_kib),
            read: AtomicU64::new(0),
            written: AtomicU64::new(0),
            resolved: Mutex::default(),
        };
        SocketPolicy {
            grant: Some(Arc::new(grant)),
            ..SocketPolicy::default()
        }
    }

    /// Configures a fresh WASI context: with a `tcp://` grant, TCP and DNS on and the
    /// grant's address check; without one, the deny-everything check of [`super::deny`].
    pub fn configure(&self, builder: &mut WasiCtxBuilder, job_id: &str, task: &str) {
        match &self.grant {
            None => super::deny::deny_sockets(builder, job_id, task),
            Some(grant) => {
                let grant = grant.clone();
                builder
                    .allow_tcp(true)
                    .allow_udp(false)
                    .allow_ip_name_lookup(true)
                    .socket_addr_check(move |addr, usage| {
                        let ok = grant.check(addr, usage);
                        Box::pin(async move { ok })
                    });
            }
        }
    }

    /// Bytes read and written over TCP so far in this job.
    pub fn bytes(&self) -> (u64, u64) {
        self.grant.as_ref().map_or((0, 0), |g| {
            (
                g.read.load(Ordering::Relaxed),
                g.written.load(Ordering::Relaxed),
            )
        })
    }
}

/// Shadows the `wasi:sockets` and `wasi:io/poll` functions listed in the module docs in
/// a component linker (after WASI p2 was added to it).
///
/// # Errors
/// The linker rejects the definitions (a wasmtime-wasi upgrade changed the names).
pub fn add_to_linker(linker: &mut Linker<ComponentState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let result = shadow(linker);
    linker.allow_shadowing(false);
    result
}

type Cx<'a> = StoreContextMut<'a, ComponentState>;

fn shadow(linker: &mut Linker<ComponentState>) -> wasmtime::Result<()> {
    let v = WASI_VERSION;
    linker
        .instance(&format!("wasi:sockets/tcp-create-socket@{v}"))?
        .func_wrap(
            "create-tcp-socket",
            |mut store: Cx<'_>, (family,): (IpAddressFamily,)| {
                Ok((create_tcp_socket(store.data_mut(), family)?,))
            },
        )?;

    let mut dns = linker.instance(&format!("wasi:sockets/ip-name-lookup@{v}"))?;
    dns.func_wrap(
        "resolve-addresses",
        |mut store: Cx<'_>, (network, name): (Resource<Network>, String)| {
            Ok((resolve_addresses(store.data_mut(), network, name)?,))
        },
    )?;
    dns.func_wrap(
        "[method]resolve-address-stream.resolve-next-address",
        |mut store: Cx<'_>, (stream,): (Resource<ResolveAddressStream>,)| {
            Ok((resolve_next_address(store.data_mut(), stream)?,))
        },
    )?;

    let mut tcp = linker.instance(&format!("wasi:sockets/tcp@{v}"))?;
    tcp.func_wrap(
        "[method]tcp-socket.start-connect",
        |mut store: Cx<'_>,
         (this, network, addr): (Resource<TcpSocket>, Resource<Network>, IpSocketAddress)| {
            Ok((start_connect(store.data_mut(), this, network, addr)?,))
        },
    )?;
    tcp.func_wrap(
        "[method]tcp-socket.finish-connect",
        |mut store: Cx<'_>, (this,): (Resource<TcpSocket>,)| {
            Ok((finish_connect(store.data_mut(), this)?,))
        },
    )?;
    tcp.func_wrap(
        "[method]tcp-socket.subscribe",
        |mut store: Cx<'_>, (this,): (Resource<TcpSocket>,)| {
            let state = store.data_mut();
            let socket = this.rep();
            let pollable = TcpHost::subscribe(&mut state.sockets_view(), this)?;
            if state.sockets.connecting.contains_key(&socket) {
                state.sockets.pollables.insert(pollable.rep(), socket);
            }
            Ok((pollable,))
        },
    )?;

    let mut poll = linker.instance(&format!("wasi:io/poll@{v}"))?;
    poll.func_wrap_async(
        "poll",
        |mut store: Cx<'_>, (list,): (Vec<Resource<DynPollable>>,)| {
            Box::new(async move {
                let state = store.data_mut();
                let deadline = connect_deadline(&state.sockets, list.iter().map(|p| p.rep()));
                let reps: Vec<u32> = list.iter().map(|p| p.rep()).collect();
                let polled = state.table_mut().poll(list);
                match deadline {
                    None => Ok((polled.await?,)),
                    Some(deadline) => match tokio::time::timeout_at(deadline, polled).await {
                        Ok(ready) => Ok((ready?,)),
                        // The connects are due: report their pollables ready, so the
                        // guest calls finish-connect and gets `timeout`.
                        Err(_) => {
                            let sockets = &store.data().sockets;
                            let due = reps
                                .iter()
                                .enumerate()
                                .filter(|(_, rep)| {
                                    connect_deadline(sockets, [**rep])
                                        .is_some_and(|d| d <= Instant::now())
                                })
                                .map(|(i, _)| i as u32)
                                .collect();
                            Ok((due,))
                        }
                    },
                }
            })
        },
    )?;
    poll.func_wrap_async(
        "[method]pollable.block",
        |mut store: Cx<'_>, (pollable,): (Resource<DynPollable>,)| {
            Box::new(async move {
                let state = store.data_mut();
                let deadline = connect_deadline(&state.sockets, [pollable.rep()]);
                let blocked = state.table_mut().block(pollable);
                match deadline {
                    None => blocked.await,
                    Some(deadline) => tokio::time::timeout_at(deadline, blocked)
                        .await
                        .unwrap_or(Ok(())),
                }
            })
        },
    )?;
    Ok(())
}

/// The earliest connect deadline among pollables subscribed to connecting sockets.
fn connect_deadline(
    policy: &SocketPolicy,
    pollables: impl IntoIterator<Item = u32>,
) -> Option<Instant> {
    if policy.connecting.is_empty() {
        return None;
    }
    pollables
        .into_iter()
        .filter_map(|p| policy.pollables.get(&p))
        .filter_map(|s| policy.connecting.get(s))
        .min()
        .copied()
}

fn create_tcp_socket(
    state: &mut ComponentState,
    family: IpAddressFamily,
) -> wasmtime::Result<Result<Resource<TcpSocket>, ErrorCode>> {
    let Some(grant) = state.sockets.grant.clone() else {
        super::deny::log_denial(state, &format!("open a TCP socket ({family:?})"));
        return Ok(Err(ErrorCode::AccessDenied));
    };
    // Count the sockets still open: a dropped socket's rep is gone from the table (or
    // holds something else, or a newer socket, which is counted once).
    let mut open = std::mem::take(&mut state.sockets.sockets);
    open.retain(|rep| {
        state
            .table_mut()
            .get(&Resource::<TcpSocket>::new_own(*rep))
            .is_ok()
    });
    if open.len() >= grant.max_sockets {
        grant.deny(&format!(
            "a new TCP socket: the job has {} open, its bound (tcp_max_sockets) is {}",
            open.len(),
            grant.max_sockets
        ));
        state.sockets.sockets = open;
        return Ok(Err(ErrorCode::NewSocketLimit));
    }
    let created = state.sockets_view().create_tcp_socket(family);
    let result = socket_result(created)?;
    if let Ok(socket) = &result {
        open.insert(socket.rep());
    }
    state.sockets.sockets = open;
    Ok(result)
}

fn resolve_addresses(
    state: &mut ComponentState,
    network: Resource<Network>,
    name: String,
) -> wasmtime::Result<Result<Resource<ResolveAddressStream>, ErrorCode>> {
    let granted = state.sockets.grant.clone();
    let Some(grant) = granted.filter(|g| g.allow.tcp_may_resolve(&name)) else {
        match &state.sockets.grant {
            None => super::deny::log_denial(state, &format!("resolve {name:?} (DNS)")),
            Some(g) => g.deny(&format!(
                "resolving {name:?} (DNS): no tcp:// pattern in allowed_hosts names it"
            )),
        }
        return Ok(Err(ErrorCode::AccessDenied));
    };
    drop(grant);
    let resolved = state
        .sockets_view()
        .resolve_addresses(network, name.clone());
    let result = socket_result(resolved)?;
    if let Ok(stream) = &result {
        state
            .sockets
            .lookups
            .insert(stream.rep(), normalise_host(&name));
    }
    Ok(result)
}

fn resolve_next_address(
    state: &mut ComponentState,
    stream: Resource<ResolveAddressStream>,
) -> wasmtime::Result<Result<Option<IpAddress>, ErrorCode>> {
    let rep = stream.rep();
    let next = socket_result(state.sockets_view().resolve_next_address(stream))?;
    if let (Ok(Some(addr)), Some(grant), Some(name)) =
        (&next, &state.sockets.grant, state.sockets.lookups.get(&rep))
    {
        let ip = ip_of(addr).to_canonical();
        let mut resolved = grant.resolved.lock().unwrap_or_else(|e| e.into_inner());
        let names = resolved.entry(ip).or_default();
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    Ok(next)
}

fn start_connect(
    state: &mut ComponentState,
    this: Resource<TcpSocket>,
    network: Resource<Network>,
    addr: IpSocketAddress,
) -> wasmtime::Result<Result<(), ErrorCode>> {
    let rep = this.rep();
    let started = socket_result(state.sockets_view().start_connect(this, network, addr))?;
    if started.is_ok()
        && let Some(grant) = &state.sockets.grant
    {
        let deadline = Instant::now() + grant.connect_timeout;
        state.sockets.connecting.insert(rep, deadline);
    }
    Ok(started)
}

/// A connection's input and output streams.
type Streams = (Resource<DynInputStream>, Resource<DynOutputStream>);

fn finish_connect(
    state: &mut ComponentState,
    this: Resource<TcpSocket>,
) -> wasmtime::Result<Result<Streams, ErrorCode>> {
    let rep = this.rep();
    let finished = socket_result(state.sockets_view().finish_connect(this))?;
    let deadline = state.sockets.connecting.get(&rep).copied();
    match finished {
        Err(ErrorCode::WouldBlock) if deadline.is_some_and(|d| d <= Instant::now()) => {
            // Leave the entry: a retried finish-connect says `timeout` again; the
            // connect attempt ends when the guest drops the socket (or with the job).
            if let Some(grant) = &state.sockets.grant {
                grant.deny(&format!(
                    "the connection: not established within tcp_connect_timeout ({:?})",
                    grant.connect_timeout
                ));
            }
            Ok(Err(ErrorCode::Timeout))
        }
        Err(e) => {
            if !matches!(e, ErrorCode::WouldBlock) {
                forget_connect(&mut state.sockets, rep);
            }
            Ok(Err(e))
        }
        Ok((input, output)) => {
            forget_connect(&mut state.sockets, rep);
            if let Some(grant) = state.sockets.grant.clone() {
                let table = state.table_mut();
                let reader: &mut DynInputStream = table.get_mut(&input)?;
                let inner = std::mem::replace(reader, Box::new(ClosedInputStream));
                *reader = Box::new(Counted {
                    inner,
                    grant: grant.clone(),
                });
                let writer: &mut DynOutputStream = table.get_mut(&output)?;
                let inner = std::mem::replace(writer, Box::new(ClosedOutputStream));
                *writer = Box::new(Counted { inner, grant });
            }
            Ok(Ok((input, output)))
        }
    }
}

fn forget_connect(policy: &mut SocketPolicy, socket: u32) {
    policy.connecting.remove(&socket);
    policy.pollables.retain(|_, s| *s != socket);
}

/// Splits wasmtime-wasi's error into the guest's error code and a trap.
fn socket_result<T>(result: Result<T, SocketError>) -> wasmtime::Result<Result<T, ErrorCode>> {
    match result {
        Ok(v) => Ok(Ok(v)),
        Err(e) => e.downcast().map(Err),
    }
}

fn ip_of(addr: &IpAddress) -> IpAddr {
    match *addr {
        IpAddress::Ipv4((a, b, c, d)) => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
        IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => {
            IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h))
        }
    }
}

/// One end of a TCP connection, counting its bytes against the job's bound.
struct Counted<S: ?Sized> {
    inner: Box<S>,
    grant: Arc<Grant>,
}

impl<S: ?Sized> Counted<S> {
    /// Adds `n` to `counter`, or refuses (and logs) when that crosses `max`.
    fn take(&self, counter: &AtomicU64, max: u64, n: usize, what: &str) -> StreamResult<()> {
        let n = n as u64;
        let before = counter.fetch_add(n, Ordering::Relaxed);
        if before.saturating_add(n) > max {
            counter.fetch_sub(n, Ordering::Relaxed);
            self.grant.deny(&format!(
                "a TCP {what}: the job's bound of {max} bytes is reached"
            ));
            return Err(StreamError::LastOperationFailed(
                std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("the job's TCP {what} bound of {max} bytes is reached"),
                )
                .into(),
            ));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl<S: Pollable + ?Sized> Pollable for Counted<S> {
    async fn ready(&mut self) {
        self.inner.ready().await;
    }
}

#[async_trait::async_trait]
impl InputStream for Counted<dyn InputStream> {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        let bytes = self.inner.read(size)?;
        self.take(&self.grant.read, self.grant.max_read, bytes.len(), "read")?;
        Ok(bytes)
    }

    fn skip(&mut self, size: usize) -> StreamResult<usize> {
        let n = self.inner.skip(size)?;
        self.take(&self.grant.read, self.grant.max_read, n, "read")?;
        Ok(n)
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await;
    }
}

#[async_trait::async_trait]
impl OutputStream for Counted<dyn OutputStream> {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.take(
            &self.grant.written,
            self.grant.max_write,
            bytes.len(),
            "write",
        )?;
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.inner.check_write()
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await;
    }
}
