//! `add(a, b)` and `mul(a, b)` on 64-bit integers.

use sprout_guest::{TaskError, task};

/// Adds two numbers (`OverflowError` if the sum does not fit in an i64).
#[task]
fn add(a: i64, b: i64) -> Result<i64, TaskError> {
    a.checked_add(b)
        .ok_or_else(|| TaskError::new("OverflowError", format!("{a} + {b} overflows i64")))
}

/// Multiplies two numbers (wrapping on overflow).
#[task]
fn mul(a: i64, b: i64) -> i64 {
    a.wrapping_mul(b)
}

sprout_guest::export_tasks!(add, mul);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_and_multiplies() {
        assert_eq!(add(1, 2), Ok(3));
        assert_eq!(add(i64::MAX, 1).unwrap_err().kind, "OverflowError");
        assert_eq!(mul(6, 7), 42);
    }

    #[test]
    fn through_json() {
        assert_eq!(TASKS.names().collect::<Vec<_>>(), ["add", "mul"]);
        assert_eq!(TASKS.run("add", "[1, 2]", "{}").unwrap(), "3");
        assert_eq!(TASKS.run("mul", "[6]", r#"{"b": 7}"#).unwrap(), "42");
        let err = TASKS.run("add", "[1]", "{}").unwrap_err();
        assert_eq!(err.kind, "TypeError");
        assert_eq!(err.message, "add() missing required argument 'b'");
    }
}
