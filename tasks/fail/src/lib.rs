//! `fail(message)`: always fails with a `ValueError` (a guest error, not a trap).

use sprout_guest::{TaskError, task};

/// Fails with kind `ValueError` and the given message.
#[task]
fn fail(message: String) -> Result<(), TaskError> {
    Err(TaskError::new("ValueError", message))
}

sprout_guest::export_tasks!(fail);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fails() {
        assert_eq!(
            fail("nope".into()),
            Err(TaskError::new("ValueError", "nope"))
        );
    }
}
