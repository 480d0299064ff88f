//! `hog()`: spins forever; only the host's fuel or time limit stops it.

use sprout_guest::task;
use std::hint::black_box;

/// Never returns: an endless, un-optimisable counter loop (no host calls, no allocation).
#[task]
fn hog() {
    let mut counter: u64 = 0;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}

sprout_guest::export_tasks!(hog);
