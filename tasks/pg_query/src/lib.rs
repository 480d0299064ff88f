//! A PostgreSQL query from a task over a real connection, in blocking style.
//!
//! Why a hand-written client: the maintained Rust client does not build for
//! wasm32-wasip2. `postgres` 0.19 (the blocking one) runs `tokio-postgres` on a tokio
//! runtime with networking, and tokio 1.54 refuses that target at compile time ("Only
//! features sync,macros,io-util,rt,time are supported on wasm"; tried with
//! `cargo build --target wasm32-wasip2`). So this is the smallest honest
//! client of PostgreSQL's frontend/backend protocol 3.0: startup with **trust** auth
//! only, the *simple query* flow (`Query` → `RowDescription`, `DataRow`s,
//! `CommandComplete`, `ReadyForQuery`), errors (`ErrorResponse`) as task errors, and
//! `Terminate`. No TLS, no passwords, no extended protocol. Its socket is a
//! `std::net::TcpStream`, which is `wasi:sockets` on wasm32-wasip2: the host waits for
//! the server asynchronously.
//!
//! The manifest grants `tcp://127.0.0.1:5432` and `tcp://localhost:5432`.

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;

use serde_json::{Map, Value, json};
use sprout_guest::{TaskError, task};

/// The largest backend message this client accepts (a guard against a garbled stream).
const MAX_MESSAGE: usize = 64 << 20;

fn pg_error(message: impl Into<String>) -> TaskError {
    TaskError::new("DatabaseError", message)
}

fn io_error(addr: &str, e: std::io::Error) -> TaskError {
    let kind = match e.kind() {
        std::io::ErrorKind::PermissionDenied => "PermissionError",
        std::io::ErrorKind::TimedOut => "TimeoutError",
        _ => "ConnectionError",
    };
    TaskError::new(kind, format!("{addr}: {e}"))
}

/// One connection: the socket, read through a buffer (messages are written whole).
/// (`TcpStream::try_clone` is not supported on WASI, so reads and writes share it.)
struct Conn {
    addr: String,
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn connect(addr: &str, user: &str, database: &str) -> Result<Conn, TaskError> {
        let stream = TcpStream::connect(addr).map_err(|e| io_error(addr, e))?;
        let mut conn = Conn {
            addr: addr.to_string(),
            reader: BufReader::new(stream),
        };
        // StartupMessage: length, protocol 3.0, then name/value pairs and a final NUL.
        let mut body = 196_608u32.to_be_bytes().to_vec();
        for (k, v) in [("user", user), ("database", database)] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        conn.send(None, &body)?;
        loop {
            let (tag, payload) = conn.receive()?;
            match tag {
                b'R' => match be_u32(&payload, 0) {
                    Some(0) => {}
                    Some(code) => {
                        return Err(pg_error(format!(
                            "the server asks for authentication method {code}; this client \
                             speaks trust authentication only"
                        )));
                    }
                    None => return Err(pg_error("malformed authentication message")),
                },
                b'E' => return Err(pg_error(error_fields(&payload))),
                b'Z' => return Ok(conn),
                // ParameterStatus, BackendKeyData, NoticeResponse: not needed here.
                _ => {}
            }
        }
    }

    fn send(&mut self, tag: Option<u8>, body: &[u8]) -> Result<(), TaskError> {
        let len = u32::try_from(body.len() + 4).map_err(|_| pg_error("message too large"))?;
        let mut out = Vec::with_capacity(body.len() + 5);
        out.extend(tag);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(body);
        self.reader
            .get_mut()
            .write_all(&out)
            .map_err(|e| io_error(&self.addr, e))
    }

    fn receive(&mut self) -> Result<(u8, Vec<u8>), TaskError> {
        let mut head = [0u8; 5];
        self.reader
            .read_exact(&mut head)
            .map_err(|e| io_error(&self.addr, e))?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if !(4..=MAX_MESSAGE).contains(&len) {
            return Err(pg_error(format!("bad message length {len}")));
        }
        let mut payload = vec![0u8; len - 4];
        self.reader
            .read_exact(&mut payload)
            .map_err(|e| io_error(&self.addr, e))?;
        Ok((head[0], payload))
    }

    /// Runs `sql` with the simple query protocol; returns the last statement's result.
    fn query(&mut self, sql: &str) -> Result<Value, TaskError> {
        if sql.contains('\0') {
            return Err(TaskError::new(
                "ValueError",
                "the query contains a NUL byte",
            ));
        }
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        self.send(Some(b'Q'), &body)?;
        let mut columns: Vec<(String, u32)> = Vec::new();
        let mut rows = Vec::new();
        let mut result = Value::Null;
        let mut error = None;
        loop {
            let (tag, payload) = self.receive()?;
            match tag {
                b'T' => {
                    columns = row_description(&payload)?;
                    rows.clear();
                }
                b'D' => rows.push(data_row(&payload, &columns)?),
                b'C' => {
                    result = json!({
                        "command": cstr(&payload, 0).map_or("", |(s, _)| s),
                        "columns": columns.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
                        "rows": std::mem::take(&mut rows),
                    });
                    columns.clear();
                }
                b'I' => result = json!({ "command": "", "columns": [], "rows": [] }),
                b'E' => error = Some(error_fields(&payload)),
                b'Z' => break,
                _ => {}
            }
        }
        match error {
            Some(e) => Err(pg_error(e)),
            None => Ok(result),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Terminate; the socket closes when the streams drop.
        let _ = self.send(Some(b'X'), &[]);
    }
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// A NUL-terminated string at `at`, and the offset after its NUL.
fn cstr(b: &[u8], at: usize) -> Option<(&str, usize)> {
    let rest = b.get(at..)?;
    let end = rest.iter().position(|&c| c == 0)?;
    Some((std::str::from_utf8(&rest[..end]).ok()?, at + end + 1))
}

/// Column names and type oids.
fn row_description(p: &[u8]) -> Result<Vec<(String, u32)>, TaskError> {
    let bad = || pg_error("malformed RowDescription");
    let n = be_u16(p, 0).ok_or_else(bad)?;
    let mut at = 2;
    let mut columns = Vec::new();
    for _ in 0..n {
        let (name, next) = cstr(p, at).ok_or_else(bad)?;
        let oid = be_u32(p, next + 6).ok_or_else(bad)?;
        columns.push((name.to_string(), oid));
        at = next + 18;
    }
    Ok(columns)
}

/// One row as JSON values: integers and booleans typed, everything else text.
fn data_row(p: &[u8], columns: &[(String, u32)]) -> Result<Value, TaskError> {
    let bad = || pg_error("malformed DataRow");
    let n = be_u16(p, 0).ok_or_else(bad)? as usize;
    let mut at = 2;
    let mut values = Vec::with_capacity(n);
    for i in 0..n {
        let len = be_u32(p, at).ok_or_else(bad)?;
        at += 4;
        if len == u32::MAX {
            values.push(Value::Null);
            continue;
        }
        let bytes = p.get(at..at + len as usize).ok_or_else(bad)?;
        at += len as usize;
        let text = String::from_utf8_lossy(bytes).into_owned();
        let value = match columns.get(i).map(|c| c.1) {
            // int2, int4, int8, oid
            Some(21 | 23 | 20 | 26) => text.parse::<i64>().map_or(Value::String(text), Value::from),
            Some(16) => Value::Bool(text == "t"),
            _ => Value::String(text),
        };
        values.push(value);
    }
    Ok(Value::Array(values))
}

/// An ErrorResponse as `SEVERITY CODE: message`.
fn error_fields(p: &[u8]) -> String {
    let mut fields = Map::new();
    let mut at = 0;
    while let Some(&kind) = p.get(at) {
        if kind == 0 {
            break;
        }
        let Some((value, next)) = cstr(p, at + 1) else {
            break;
        };
        fields.insert((kind as char).to_string(), Value::String(value.to_string()));
        at = next;
    }
    let get = |k: &str| fields.get(k).and_then(Value::as_str).unwrap_or("");
    format!("{} {}: {}", get("S"), get("C"), get("M"))
}

/// Runs `sql` on the PostgreSQL server at `addr` (`host:port`) as `user` on `database`
/// (trust authentication) and returns the last statement's
/// `{"command", "columns", "rows"}`.
#[task]
fn pg_query(addr: String, user: String, database: String, sql: String) -> Result<Value, TaskError> {
    let mut conn = Conn::connect(&addr, &user, &database)?;
    conn.query(&sql)
}

sprout_guest::export_tasks!(pg_query);
