//! Raw TCP from plain blocking `std::net` code: on wasm32-wasip2 every call below is a
//! `wasi:sockets` call that the Sprout host performs asynchronously, under the task
//! manifest's `tcp://` grants and socket bounds. The host's tests drive these tasks
//! (tests/all/sockets.rs); each error names the address and the OS error the guest saw.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::Duration;

use sprout_guest::{TaskError, task};

/// A task error for a failed socket call: `PermissionError` when the host denied it,
/// `TimeoutError` for a timeout, else `ConnectionError`; the message names what was tried.
fn net_error(what: &str, e: std::io::Error) -> TaskError {
    let kind = match e.kind() {
        std::io::ErrorKind::PermissionDenied => "PermissionError",
        std::io::ErrorKind::TimedOut => "TimeoutError",
        _ => "ConnectionError",
    };
    TaskError::new(kind, format!("{what}: {e}"))
}

fn connect(addr: &str) -> Result<TcpStream, TaskError> {
    TcpStream::connect(addr).map_err(|e| net_error(&format!("connect {addr}"), e))
}

/// Connects to `addr` (`host:port`), sends an inline Redis `PING` and returns the reply
/// line (`PONG` from Redis).
#[task]
fn tcp_ping(addr: String) -> Result<String, TaskError> {
    let mut stream = connect(&addr)?;
    stream
        .write_all(b"PING\r\n")
        .map_err(|e| net_error(&format!("write to {addr}"), e))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| net_error(&format!("read from {addr}"), e))?;
    Ok(line.trim_end().trim_start_matches('+').to_string())
}

/// Resolves `name` (DNS through the host) and returns the addresses.
#[task]
fn resolve(name: String) -> Result<Vec<String>, TaskError> {
    let addrs = (name.as_str(), 0)
        .to_socket_addrs()
        .map_err(|e| net_error(&format!("resolve {name}"), e))?;
    Ok(addrs.map(|a| a.ip().to_string()).collect())
}

/// Opens `count` connections to `addr`, all at once, then reads one line from each (the
/// test server answers after a delay) and returns the lines. Fails on the first
/// connection the host refuses (e.g. over the job's socket bound).
#[task]
fn tcp_hold(addr: String, count: u32) -> Result<Vec<String>, TaskError> {
    let mut streams = Vec::new();
    for i in 0..count {
        let stream = connect(&addr).map_err(|mut e| {
            e.message = format!("socket {} of {count}: {}", i + 1, e.message);
            e
        })?;
        streams.push(stream);
    }
    streams
        .into_iter()
        .map(|s| {
            let mut line = String::new();
            BufReader::new(s)
                .read_line(&mut line)
                .map_err(|e| net_error(&format!("read from {addr}"), e))?;
            Ok(line.trim_end().to_string())
        })
        .collect()
}

/// Connects to `addr`, then ends as `how` says while the socket is open: `ok` (returns),
/// `error` (a task error), `trap` (panics), `spin` (loops until fuel or time runs out),
/// `sleep` (sleeps an hour: time limit or revoke).
#[task]
fn tcp_then(addr: String, how: String) -> Result<String, TaskError> {
    let stream = connect(&addr)?;
    match how.as_str() {
        "ok" => Ok(format!(
            "connected to {}",
            stream.peer_addr().map_or(addr, |a| a.to_string())
        )),
        "error" => Err(TaskError::new("RuntimeError", "failed on purpose")),
        "trap" => panic!("trapping with a socket open"),
        "spin" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "sleep" => {
            std::thread::sleep(Duration::from_secs(3600));
            Ok("woke".into())
        }
        other => Err(TaskError::new(
            "ValueError",
            format!("unknown how {other:?}"),
        )),
    }
}

/// Writes `kib` KiB to `addr`, then reads until the peer closes; returns the bytes read.
/// Exercises the job's TCP byte bounds.
#[task]
fn tcp_transfer(addr: String, kib: u64) -> Result<u64, TaskError> {
    let mut stream = connect(&addr)?;
    let chunk = vec![b'x'; 1024];
    for _ in 0..kib {
        stream
            .write_all(&chunk)
            .map_err(|e| net_error(&format!("write to {addr}"), e))?;
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(|e| net_error(&format!("shutdown {addr}"), e))?;
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) => {
                return Err(net_error(
                    &format!("read from {addr} after {total} bytes"),
                    e,
                ));
            }
        }
    }
}

/// Tries to listen on `addr` (always denied: tasks may only connect out).
#[task]
fn tcp_listen(addr: String) -> Result<String, TaskError> {
    let listener =
        TcpListener::bind(&addr).map_err(|e| net_error(&format!("listen on {addr}"), e))?;
    Ok(format!("listening on {:?}", listener.local_addr()))
}

/// Tries to send a UDP datagram to `addr` (always denied).
#[task]
fn udp_send(addr: String) -> Result<String, TaskError> {
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| net_error("open a UDP socket", e))?;
    socket
        .send_to(b"hello", &addr)
        .map_err(|e| net_error(&format!("send to {addr}"), e))?;
    Ok("sent".into())
}

sprout_guest::export_tasks!(
    tcp_ping,
    resolve,
    tcp_hold,
    tcp_then,
    tcp_transfer,
    tcp_listen,
    udp_send
);
