//! `trap(message)`: panics; in wasm a panic aborts, so the host sees a trap and the panic
//! message on the guest's stderr.

use sprout_guest::task;

/// Panics with `message`.
#[task]
fn trap(message: String) {
    panic!("{message}");
}

sprout_guest::export_tasks!(trap);
