//! Hosts made of Linux network namespaces, for tests of a fleet across machines.
//!
//! A [`Network`] is one bridge in the root namespace (the "switch", with an address the
//! test process itself listens and connects on) and one namespace per host, each joined
//! to the bridge by a veth pair, all inside one private `10.231.N.0/24` that no other
//! interface of the machine uses. Pulling a host's cable is
//! `ip link set <its bridge-side veth> down`: its packets are dropped (no reset, no
//! error), as when a machine drops off the network; [`Network::reconnect`] plugs it in
//! again and its TCP connections carry on.
//!
//! Everything a test creates is named `sfl<pid><n>…`, so a run killed outright (no
//! `Drop`) is recognised by the next one, which deletes what a dead pid left. The
//! [`Network`] deletes its veth pairs, namespaces and bridge on drop, also while a
//! failed assertion unwinds. Processes started with [`Network::spawn`] are best killed
//! by their own guards first (declare the network before them); whatever still runs in
//! a namespace when the network drops is killed then.
//!
//! Needs root and `ip` (iproute2): [`Network::create`] returns `None`, after saying why
//! loudly, when either is missing.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The first two octets of every test network; the third is chosen free per network.
const NET_PREFIX: [u8; 2] = [10, 231];
/// Prefix of every name a network creates (namespaces, bridge, veths).
const NAME_PREFIX: &str = "sfl";

/// One host of a [`Network`]: a namespace with one address on the test network.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace (`ip netns` name, `/run/netns/<name>`).
    pub netns: String,
    /// The host's address.
    pub addr: Ipv4Addr,
    /// The bridge-side end of its veth pair (down = cable pulled).
    veth: String,
}

/// A bridge and namespaced hosts on a private /24; deleted on drop.
#[derive(Debug)]
pub struct Network {
    /// The bridge (in the root namespace).
    bridge: String,
    /// The root namespace's address on the bridge (the test process's own).
    pub gateway: Ipv4Addr,
    hosts: Vec<Host>,
}

/// Runs `ip ARGS`; the error names the command and what `ip` said.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `ip ARGS`'s stdout, or empty when it fails.
fn ip_output(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Whether process `pid` exists.
fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The pid a name made by this module carries (`sfl<pid hex, 6>…`).
fn owner_pid(name: &str) -> Option<u32> {
    let hex = name.strip_prefix(NAME_PREFIX)?.get(..6)?;
    u32::from_str_radix(hex, 16).ok()
}

/// Deletes namespaces and bridges that runs killed outright left behind (their pid is
/// gone). Processes still inside such a namespace keep it alive, so they are killed.
fn sweep_stale() {
    for line in ip_output(&["netns", "list"]).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if owner_pid(name).is_some_and(|pid| !alive(pid)) {
            kill_inside(name);
            let _ = ip(&["netns", "del", name]);
            eprintln!("netns: deleted namespace {name} left by a killed test run");
        }
    }
    for line in ip_output(&["-o", "link", "show", "type", "bridge"]).lines() {
        // "12: sfl0012ab0: <…"
        let Some(name) = line
            .split(": ")
            .nth(1)
            .map(|n| n.split('@').next().unwrap_or(n))
        else {
            continue;
        };
        if owner_pid(name).is_some_and(|pid| !alive(pid)) {
            let _ = ip(&["link", "del", name]);
            eprintln!("netns: deleted bridge {name} left by a killed test run");
        }
    }
}

/// SIGKILLs every process inside namespace `name`.
fn kill_inside(name: &str) {
    for pid in ip_output(&["netns", "pids", name]).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            // SAFETY: kill(2) with a pid `ip` listed in a namespace only this module makes.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// A third octet no interface of the machine uses in `10.231.0.0/16`, starting from
/// `seed`.
fn free_subnet(seed: u32) -> Option<u8> {
    let used = ip_output(&["-o", "-4", "addr", "show"]);
    (0..250u32)
        .map(|i| ((seed + i) % 250 + 1) as u8)
        .find(|n| !used.contains(&format!(" {}.{}.{n}.", NET_PREFIX[0], NET_PREFIX[1])))
}

impl Network {
    /// A bridge and `hosts` namespaces on a fresh /24; `None` (after printing why
    /// `test` is skipped) without root or `ip`.
    ///
    /// # Panics
    /// When root and `ip` are there but setting the network up fails.
    pub fn create(test: &str, hosts: usize) -> Option<Network> {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED {test}: needs root to create network namespaces");
            return None;
        }
        if !crate::support::installed(test, "ip", "-V") {
            return None;
        }
        sweep_stale();
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        assert!(seq < 16 && hosts < 10, "names would not fit IFNAMSIZ");
        let pid = std::process::id();
        let base = format!("{NAME_PREFIX}{pid:06x}{seq:x}");
        let third = free_subnet(pid.wrapping_mul(7) + seq * 31).expect("a free 10.231.N.0/24");
        let addr = |n: u8| Ipv4Addr::new(NET_PREFIX[0], NET_PREFIX[1], third, n);
        let mut net = Network {
            bridge: format!("{base}b"),
            gateway: addr(1),
            hosts: Vec::new(),
        };
        // From here on `net` is dropped (and deletes what exists) if a step fails.
        let cidr = |a: Ipv4Addr| format!("{a}/24");
        ip(&["link", "add", &net.bridge, "type", "bridge"]).expect("bridge");
        ip(&["addr", "add", &cidr(net.gateway), "dev", &net.bridge]).expect("bridge address");
        ip(&["link", "set", &net.bridge, "up"]).expect("bridge up");
        for n in 0..hosts {
            let host = Host {
                netns: format!("{base}n{n}"),
                addr: addr(2 + n as u8),
                veth: format!("{base}v{n}"),
            };
            let peer = format!("{base}p{n}");
            ip(&["netns", "add", &host.netns]).expect("netns");
            net.hosts.push(host.clone());
            ip(&[
                "link", "add", &host.veth, "type", "veth", "peer", "name", &peer,
            ])
            .expect("veth");
            ip(&["link", "set", &peer, "netns", &host.netns]).expect("veth into netns");
            ip(&["link", "set", &host.veth, "master", &net.bridge, "up"]).expect("veth up");
            let inside = |args: &[&str]| {
                let mut all = vec!["-n", host.netns.as_str()];
                all.extend_from_slice(args);
                ip(&all)
            };
            inside(&["addr", "add", &cidr(host.addr), "dev", &peer]).expect("address");
            inside(&["link", "set", &peer, "up"]).expect("peer up");
            inside(&["link", "set", "lo", "up"]).expect("lo up");
        }
        Some(net)
    }

    /// Host `n` (in creation order).
    pub fn host(&self, n: usize) -> &Host {
        &self.hosts[n]
    }

    /// Pulls host `n`'s cable: its bridge-side veth goes down, so everything it sends
    /// or is sent is dropped until [`Network::reconnect`].
    pub fn disconnect(&self, n: usize) {
        ip(&["link", "set", &self.hosts[n].veth, "down"]).expect("veth down");
    }

    /// Plugs host `n`'s cable back in.
    pub fn reconnect(&self, n: usize) {
        ip(&["link", "set", &self.hosts[n].veth, "up"]).expect("veth up");
    }

    /// Starts `cmd` inside host `n`'s namespace (the child joins it before `exec`).
    pub fn spawn(&self, n: usize, cmd: &mut Command) -> std::io::Result<Child> {
        let ns = std::fs::File::open(format!("/run/netns/{}", self.hosts[n].netns))?;
        let fd = ns.as_raw_fd();
        // SAFETY: setns(2) is async-signal-safe; `ns` outlives `spawn` (the fd is open
        // in the forked child).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = cmd.spawn();
        drop(ns);
        child
    }
}

impl Drop for Network {
    /// Kills what still runs inside the namespaces (a test's own guards have normally
    /// done so), then deletes the veth pairs (at once: a deleted namespace takes its
    /// devices with it only later, in the kernel's own time), the namespaces and the
    /// bridge. Never panics: it may run while a failed assertion unwinds.
    fn drop(&mut self) {
        for host in &self.hosts {
            kill_inside(&host.netns);
            if let Err(e) = ip(&["link", "del", &host.veth]) {
                eprintln!("warning: {e}");
            }
            if let Err(e) = ip(&["netns", "del", &host.netns]) {
                eprintln!("warning: {e}");
            }
        }
        if let Err(e) = ip(&["link", "del", &self.bridge]) {
            eprintln!("warning: {e}");
        }
    }
}

/// Creating and dropping a network leaves no namespace, bridge or veth behind, also
/// when the test using it panics; hosts reach each other and the root namespace, and a
/// pulled cable cuts a host off until it is plugged back in.
#[test]
fn netns_network_is_reachable_cut_and_cleaned() {
    let test = "netns_network_is_reachable_cut_and_cleaned";
    let Some(probe) = Network::create(test, 1) else {
        return;
    };
    drop(probe);
    let names = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = names.clone();
    let outcome = std::thread::spawn(move || {
        let net = Network::create(test, 2).expect("root and ip were there a moment ago");
        let mut all: Vec<String> = net.hosts.iter().map(|h| h.netns.clone()).collect();
        all.push(net.bridge.clone());
        all.extend(net.hosts.iter().map(|h| h.veth.clone()));
        *seen.lock().unwrap() = all;
        // Host 1 listens; host 0 and the root namespace connect to it.
        let listener = std::net::TcpListener::bind((net.gateway, 0)).expect("bind gateway");
        let port = listener.local_addr().unwrap().port();
        let connects = |n: usize| {
            let out = net
                .spawn(
                    n,
                    Command::new("python3")
                        .args([
                            "-c",
                            "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)",
                        ])
                        .arg(net.gateway.to_string())
                        .arg(port.to_string())
                        .stderr(Stdio::null()),
                )
                .expect("spawn python3")
                .wait()
                .expect("wait");
            out.success()
        };
        assert!(connects(0), "host 0 reaches the root namespace");
        assert!(connects(1), "host 1 reaches the root namespace");
        net.disconnect(0);
        assert!(!connects(0), "a cut host reaches nothing");
        assert!(connects(1), "the other host is not cut");
        net.reconnect(0);
        assert!(connects(0), "a reconnected host reaches the root namespace again");
        panic!("expected panic: a failing test inside a network");
    })
    .join();
    assert!(outcome.is_err(), "the body was meant to panic");
    let names = names.lock().unwrap().clone();
    assert!(names.len() >= 5, "{names:?}");
    let netns = ip_output(&["netns", "list"]);
    let links = ip_output(&["-o", "link", "show"]);
    for name in &names {
        assert!(
            !netns.contains(name.as_str()) && !links.contains(&format!(" {name}")),
            "{name} was left behind"
        );
    }
}
