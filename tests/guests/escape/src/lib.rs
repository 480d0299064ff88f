//! Tasks that reach for what a sandbox must not give them. Each returns what it got
//! (data or the error text) so a test can check that the answer is a denial the guest
//! could handle, not a crash.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};

use sprout_guest::{TaskError, task};

fn io_error(e: std::io::Error) -> TaskError {
    TaskError::new("IOError", format!("{:?}: {e}", e.kind()))
}

/// Reads a file and returns its text.
#[task]
fn read_file(path: String) -> Result<String, TaskError> {
    let mut text = String::new();
    std::fs::File::open(&path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .map_err(io_error)?;
    Ok(text)
}

/// Creates (or truncates) a file and writes `text` to it.
#[task]
fn write_file(path: String, text: String) -> Result<u64, TaskError> {
    let mut file = std::fs::File::create(&path).map_err(io_error)?;
    file.write_all(text.as_bytes()).map_err(io_error)?;
    Ok(text.len() as u64)
}

/// Lists a directory.
#[task]
fn list_dir(path: String) -> Result<Vec<String>, TaskError> {
    let mut names: Vec<String> = std::fs::read_dir(&path)
        .map_err(io_error)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// Opens a TCP connection to `addr` (`"127.0.0.1:6379"`) and reads a little.
#[task]
fn connect(addr: String) -> Result<String, TaskError> {
    let mut stream = TcpStream::connect(&addr).map_err(io_error)?;
    let mut buf = [0u8; 16];
    let n = stream.read(&mut buf).map_err(io_error)?;
    Ok(format!("connected, read {n} bytes"))
}

/// Resolves a host name (DNS).
#[task]
fn resolve(host: String) -> Result<Vec<String>, TaskError> {
    let addrs = (host.as_str(), 80).to_socket_addrs().map_err(io_error)?;
    Ok(addrs.map(|a| a.ip().to_string()).collect())
}

/// An environment variable, if the guest can see it.
#[task]
fn env(name: String) -> Result<Option<String>, TaskError> {
    Ok(std::env::var(name).ok())
}

/// The whole environment the guest sees.
#[task]
fn environ() -> Result<Vec<String>, TaskError> {
    Ok(std::env::vars().map(|(k, v)| format!("{k}={v}")).collect())
}

/// Recurses `depth` levels with a big frame on the shadow stack (linear memory).
#[task]
fn recurse(depth: u64) -> Result<u64, TaskError> {
    #[inline(never)]
    fn down(n: u64) -> u64 {
        let frame = std::hint::black_box([n as u8; 1024]);
        if n == 0 {
            return frame[0] as u64;
        }
        down(n - 1) + std::hint::black_box(frame[(n % 1024) as usize]) as u64
    }
    Ok(down(depth))
}

/// Allocates 1 MiB chunks (touched) forever: a memory bomb.
#[task]
fn memory_bomb() -> Result<u64, TaskError> {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        chunks.push(vec![1u8; 1 << 20]);
        std::hint::black_box(&chunks);
    }
}

/// Writes `mib` MiB to stdout in 64 KiB lines, then returns "done".
#[task]
fn flood(mib: u64) -> Result<String, TaskError> {
    let line = vec![b'x'; 64 << 10];
    let mut out = std::io::stdout();
    for _ in 0..mib * 16 {
        out.write_all(&line).map_err(io_error)?;
    }
    Ok("done".into())
}

sprout_guest::export_tasks!(
    read_file,
    write_file,
    list_dir,
    connect,
    resolve,
    env,
    environ,
    recurse,
    memory_bomb,
    flood
);
