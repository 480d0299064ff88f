//! `alloc(mib)`: allocates and touches `mib` MiB (for the memory limit).

use sprout_guest::{TaskError, task};
use std::hint::black_box;

const MIB: u64 = 1024 * 1024;
const PAGE: usize = 4096;

/// Allocates `mib` MiB, writes to every 4 KiB page, and returns the number of bytes.
/// A failed allocation aborts (a trap), like any out-of-memory in Rust.
#[task]
fn alloc(mib: u64) -> Result<u64, TaskError> {
    let bytes = mib
        .checked_mul(MIB)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| TaskError::new("ValueError", format!("alloc() {mib} MiB is too large")))?;
    let mut buf = vec![0u8; bytes];
    for i in (0..bytes).step_by(PAGE) {
        buf[i] = 1;
    }
    black_box(&buf);
    Ok(buf.len() as u64)
}

sprout_guest::export_tasks!(alloc);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates() {
        assert_eq!(alloc(2), Ok(2 * MIB));
        assert_eq!(alloc(0), Ok(0));
    }
}
