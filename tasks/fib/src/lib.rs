//! `fib(n)`: the n-th Fibonacci number by naive recursion, a CPU benchmark
//! (about 1.6^n calls; fib(30) = 832040 takes ~1.3 M calls).

use sprout_guest::task;
use std::hint::black_box;

/// The n-th Fibonacci number (`fib(0) = 0`, `fib(1) = 1`), computed the slow way on
/// purpose. Wraps on overflow (n > 93).
#[task]
fn fib(n: u32) -> u64 {
    // `black_box` on the input only: the optimiser cannot fold a known `n` into a
    // constant. Not on every call: in wasm `black_box` spills the value to linear memory
    // and reads it back, which made each call ~3× its native cost and measured
    // `black_box`, not the sandbox (BENCHMARKS.md).
    slow_fib(black_box(n))
}

#[inline(never)]
fn slow_fib(n: u32) -> u64 {
    if n < 2 {
        u64::from(n)
    } else {
        slow_fib(n - 1).wrapping_add(slow_fib(n - 2))
    }
}

sprout_guest::export_tasks!(fib);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values() {
        let expected = [0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55];
        for (n, want) in expected.iter().enumerate() {
            assert_eq!(fib(n as u32), *want);
        }
        assert_eq!(fib(25), 75025);
        assert_eq!(TASKS.run("fib", "[20]", "{}").unwrap(), "6765");
    }
}
