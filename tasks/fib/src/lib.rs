//! CPU benchmarks: `fib(n)`, the n-th Fibonacci number by naive recursion (call-heavy:
//! about 1.6^n calls; fib(30) = 832040 takes ~1.3 M calls), and `sort(n, seed)`, which
//! sorts `n` pseudo-random numbers (loop-heavy: few calls, tight loops over memory).

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

/// Sorts `n` pseudo-random `u32` (xorshift32 from `seed`, which must not be 0) and
/// returns a checksum of the sorted order: `sum(i * v[i])`, wrapping. The host's bench
/// runs the same source natively (`pseudo_random_sort` in host/benches/sandbox.rs).
#[task]
fn sort(n: u32, seed: u32) -> u64 {
    pseudo_random_sort(black_box(n), black_box(seed))
}

#[inline(never)]
fn pseudo_random_sort(n: u32, seed: u32) -> u64 {
    let mut x = seed.max(1);
    let mut v: Vec<u32> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        })
        .collect();
    v.sort_unstable();
    v.iter()
        .enumerate()
        .fold(0u64, |acc, (i, &x)| acc.wrapping_add(i as u64 * u64::from(x)))
}

sprout_guest::export_tasks!(fib, sort);

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

    #[test]
    fn sort_checksums_the_sorted_order() {
        // Sorted, the checksum weights each value by its rank: a sort that is off by one
        // element changes it. [270369, 67634689, 2647435461] from seed 1, by hand.
        assert_eq!(sort(3, 1), 67634689 + 2 * 2647435461);
        assert_eq!(sort(0, 7), 0);
        let mut v: Vec<u32> = Vec::new();
        let mut x = 12345u32;
        for _ in 0..1000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            v.push(x);
        }
        v.sort();
        let want = v
            .iter()
            .enumerate()
            .fold(0u64, |a, (i, &x)| a.wrapping_add(i as u64 * u64::from(x)));
        assert_eq!(sort(1000, 12345), want);
    }
}
