//! `echo(value)`: returns its argument unchanged.

use sprout_guest::serde_json::Value;
use sprout_guest::task;

/// Returns `value` unchanged.
#[task]
fn echo(value: Value) -> Value {
    value
}

sprout_guest::export_tasks!(echo);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn returns_its_argument() {
        let v = json!({"a": [1, "two", null]});
        assert_eq!(echo(v.clone()), v);
        assert_eq!(
            TASKS.call("echo", json!([v.clone()]), json!({})).unwrap(),
            v
        );
        assert_eq!(
            TASKS
                .call("echo", json!([]), json!({"value": "x"}))
                .unwrap(),
            json!("x")
        );
        assert_eq!(TASKS.run("echo", "[]", "{}").unwrap_err().kind, "TypeError");
    }
}
