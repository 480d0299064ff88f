//! A task written without the SDK: a plain WASI command (`wasm32-wasip1`).
//!
//! Protocol: the host writes `{"args": [...], "kwargs": {...}}` to stdin; the command writes
//! the JSON result to stdout and exits 0, or writes a reason to stderr and exits non-zero.
//!
//! This one upper-cases every string in `args` and returns the list (other values are
//! returned unchanged). It takes no keyword arguments.

use serde_json::Value;
use std::io::{Read, Write};
use std::process::ExitCode;

fn run(input: &str) -> Result<Value, String> {
    let request: Value =
        serde_json::from_str(input).map_err(|e| format!("stdin is not valid JSON: {e}"))?;
    let Value::Object(mut request) = request else {
        return Err("stdin must be a JSON object {\"args\": [...], \"kwargs\": {...}}".into());
    };
    let args = match request.remove("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(args)) => args,
        Some(other) => return Err(format!("\"args\" must be a JSON array, not {other}")),
    };
    match request.remove("kwargs") {
        None | Some(Value::Null) => {}
        Some(Value::Object(kwargs)) => {
            if let Some(key) = kwargs.keys().next() {
                return Err(format!(
                    "upper() got an unexpected keyword argument '{key}'"
                ));
            }
        }
        Some(other) => return Err(format!("\"kwargs\" must be a JSON object, not {other}")),
    }
    Ok(Value::Array(args.into_iter().map(upper).collect()))
}

fn upper(value: Value) -> Value {
    match value {
        Value::String(s) => Value::String(s.to_uppercase()),
        other => other,
    }
}

fn main() -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("wasi_upper: cannot read stdin: {e}");
        return ExitCode::FAILURE;
    }
    match run(&input) {
        Ok(result) => {
            let mut out = std::io::stdout().lock();
            if write!(out, "{result}").and_then(|()| out.flush()).is_err() {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(reason) => {
            eprintln!("wasi_upper: {reason}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn upper_cases_strings() {
        let out = run(r#"{"args": ["abc", 1, "Déjà vu", null], "kwargs": {}}"#).unwrap();
        assert_eq!(out, json!(["ABC", 1, "DÉJÀ VU", null]));
        assert_eq!(run(r#"{"args": []}"#).unwrap(), json!([]));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(run("not json").unwrap_err().contains("not valid JSON"));
        assert!(run("[1]").is_err());
        assert!(run(r#"{"args": 1}"#).is_err());
        assert!(
            run(r#"{"args": [], "kwargs": {"x": 1}}"#)
                .unwrap_err()
                .contains("'x'")
        );
    }
}
