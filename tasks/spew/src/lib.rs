//! `spew(bytes)` returns a large result; `shout(bytes)` writes a lot to stdout.
//! Both exercise the host's output caps.

use sprout_guest::{TaskError, task};
use std::io::Write;

/// Returns a string of exactly `bytes` bytes (`"xxx…"`); its JSON is `bytes + 2` bytes.
#[task]
fn spew(bytes: u64) -> Result<String, TaskError> {
    Ok("x".repeat(size(bytes)?))
}

/// Writes `bytes` bytes (lines of `y`) to stdout and returns 0.
#[task]
fn shout(bytes: u64) -> Result<u64, TaskError> {
    let mut left = size(bytes)?;
    let line = [b"y".repeat(63), b"\n".to_vec()].concat();
    let mut out = std::io::stdout().lock();
    while left > 0 {
        let n = left.min(line.len());
        // A host that closes or caps stdout may fail the write: stop quietly.
        if out.write_all(&line[line.len() - n..]).is_err() {
            break;
        }
        left -= n;
    }
    let _ = out.flush();
    Ok(0)
}

fn size(bytes: u64) -> Result<usize, TaskError> {
    usize::try_from(bytes)
        .map_err(|_| TaskError::new("ValueError", format!("{bytes} bytes is too many")))
}

sprout_guest::export_tasks!(spew, shout);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spews() {
        assert_eq!(spew(5).unwrap(), "xxxxx");
        assert_eq!(TASKS.run("spew", "[3]", "{}").unwrap(), r#""xxx""#);
        assert_eq!(shout(0), Ok(0));
    }
}
