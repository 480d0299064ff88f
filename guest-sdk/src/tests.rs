//! Tests of `#[task]` argument binding, results and dispatch, through `TaskSet::run` as the
//! host would call it.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{JobInfo, TaskError, task, testing};

/// Adds two numbers.
#[task]
fn add(a: i64, b: i64) -> Result<i64, TaskError> {
    Ok(a + b)
}

#[task]
fn mul(a: i64, b: i64) -> i64 {
    a * b
}

#[task(name = "text.greet")]
fn greet(name: String, greeting: Option<String>, times: Option<u32>) -> String {
    let greeting = greeting.unwrap_or_else(|| "Hello".into());
    vec![format!("{greeting}, {name}!"); times.unwrap_or(1) as usize].join(" ")
}

#[task]
fn nothing() {}

#[derive(Debug, Deserialize, Serialize, PartialEq)]
struct Point {
    x: f64,
    y: f64,
}

#[task]
fn shift(p: Point, by: Vec<f64>) -> Point {
    Point {
        x: p.x + by[0],
        y: p.y + by[1],
    }
}

#[task]
fn untyped(value: Value) -> Result<Value, String> {
    if value.is_null() {
        Err("null is not allowed".into())
    } else {
        Ok(value)
    }
}

#[task]
fn retries() -> Result<u32, TaskError> {
    let job = crate::job();
    if job.retries < 2 {
        Err(TaskError::retry_after(
            std::time::Duration::from_millis(1500),
            "again",
        ))
    } else {
        Ok(job.retries)
    }
}

#[task]
fn bad_output() -> std::collections::HashMap<Vec<u8>, u8> {
    std::collections::HashMap::from([(vec![1], 1)])
}

#[allow(non_snake_case)]
#[task]
fn r#type(r#fn: String) -> String {
    r#fn
}

// A parameter named like its function.
#[task]
fn n(n: u32) -> u32 {
    n + 1
}

mod nested {
    use crate::task;

    #[task]
    pub(crate) fn sub(a: i64, b: i64) -> i64 {
        a - b
    }
}

crate::export_tasks!(
    add,
    mul,
    greet,
    nothing,
    shift,
    untyped,
    retries,
    bad_output,
    r#type,
    n,
    nested::sub,
);

fn run(task: &str, args: &str, kwargs: &str) -> Result<String, TaskError> {
    TASKS.run(task, args, kwargs)
}

fn type_error(task: &str, args: &str, kwargs: &str) -> String {
    let err = run(task, args, kwargs).expect_err("the call should fail");
    assert_eq!(err.kind, "TypeError", "{err}");
    assert!(err.retry.is_none());
    err.message
}

#[test]
fn functions_stay_callable() {
    assert_eq!(add(1, 2), Ok(3));
    assert_eq!(mul(2, 3), 6);
    assert_eq!(nested::sub(5, 3), 2);
}

#[test]
fn names_in_export_order() {
    let names: Vec<&str> = TASKS.names().collect();
    assert_eq!(
        names,
        [
            "add",
            "mul",
            "text.greet",
            "nothing",
            "shift",
            "untyped",
            "retries",
            "bad_output",
            "type",
            "n",
            "sub"
        ]
    );
    assert_eq!(TASKS.__wit_tasks().len(), names.len());
}

#[test]
fn positional() {
    assert_eq!(run("add", "[1, 2]", "{}").unwrap(), "3");
    assert_eq!(run("mul", "[-4, 5]", "{}").unwrap(), "-20");
    assert_eq!(run("n", "[41]", "{}").unwrap(), "42");
}

#[test]
fn keyword() {
    assert_eq!(run("add", "[]", r#"{"a": 1, "b": 2}"#).unwrap(), "3");
    assert_eq!(run("add", "[10]", r#"{"b": 5}"#).unwrap(), "15");
    // Keyword order does not matter.
    assert_eq!(run("add", "[]", r#"{"b": 1, "a": 20}"#).unwrap(), "21");
    // Raw identifiers are exported and bound without `r#`.
    assert_eq!(run("type", "[]", r#"{"fn": "x"}"#).unwrap(), r#""x""#);
}

#[test]
fn empty_or_null_args_mean_none() {
    assert_eq!(run("nothing", "", "").unwrap(), "null");
    assert_eq!(run("nothing", "null", " null ").unwrap(), "null");
    assert_eq!(run("add", "[1, 2]", "").unwrap(), "3");
}

#[test]
fn missing() {
    assert_eq!(
        type_error("add", "[1]", "{}"),
        "add() missing required argument 'b'"
    );
    assert_eq!(
        type_error("add", "[]", "{}"),
        "add() missing required arguments 'a' and 'b'"
    );
    assert_eq!(
        type_error("shift", "[]", "{}"),
        "shift() missing required arguments 'p' and 'by'"
    );
    assert_eq!(
        type_error("text.greet", "[]", r#"{"times": 2}"#),
        "text.greet() missing required argument 'name'"
    );
}

#[test]
fn too_many_positional() {
    assert_eq!(
        type_error("add", "[1, 2, 3]", "{}"),
        "add() takes 2 positional arguments but 3 were given"
    );
    assert_eq!(
        type_error("nothing", "[1]", "{}"),
        "nothing() takes 0 positional arguments but 1 was given"
    );
    assert_eq!(
        type_error("n", "[1, 2]", "{}"),
        "n() takes 1 positional argument but 2 were given"
    );
}

#[test]
fn unknown_keyword() {
    assert_eq!(
        type_error("add", "[1, 2]", r#"{"c": 3}"#),
        "add() got an unexpected keyword argument 'c'"
    );
    assert_eq!(
        type_error("nothing", "[]", r#"{"x": null}"#),
        "nothing() got an unexpected keyword argument 'x'"
    );
}

#[test]
fn duplicate() {
    assert_eq!(
        type_error("add", "[1, 2]", r#"{"a": 3}"#),
        "add() got multiple values for argument 'a'"
    );
    assert_eq!(
        type_error("add", "[1]", r#"{"a": 1, "b": 2}"#),
        "add() got multiple values for argument 'a'"
    );
}

#[test]
fn wrong_type() {
    assert_eq!(
        type_error("add", r#"["1", 2]"#, "{}"),
        "add() argument 'a': invalid type: string \"1\", expected i64"
    );
    assert_eq!(
        type_error("add", "[1]", r#"{"b": 2.5}"#),
        "add() argument 'b': invalid type: floating point `2.5`, expected i64"
    );
    // null is a value, not an omission: a required parameter rejects it.
    assert_eq!(
        type_error("add", "[1, null]", "{}"),
        "add() argument 'b': invalid type: null, expected i64"
    );
    assert_eq!(
        type_error("n", "[-1]", "{}"),
        "n() argument 'n': invalid value: integer `-1`, expected u32"
    );
    let msg = type_error("shift", r#"[{"x": 1}, [0, 0]]"#, "{}");
    assert_eq!(msg, "shift() argument 'p': missing field `y`");
}

#[test]
fn optional_parameters() {
    assert_eq!(
        run("text.greet", r#"["Ada"]"#, "{}").unwrap(),
        r#""Hello, Ada!""#
    );
    assert_eq!(
        run("text.greet", r#"["Ada", "Hi"]"#, "{}").unwrap(),
        r#""Hi, Ada!""#
    );
    assert_eq!(
        run("text.greet", "[]", r#"{"name": "Bo", "times": 2}"#).unwrap(),
        r#""Hello, Bo! Hello, Bo!""#
    );
    // An explicit null is None too.
    assert_eq!(
        run("text.greet", r#"["Ada", null, null]"#, "{}").unwrap(),
        r#""Hello, Ada!""#
    );
    assert_eq!(
        type_error("text.greet", r#"["Ada"]"#, r#"{"times": "x"}"#),
        "text.greet() argument 'times': invalid type: string \"x\", expected u32"
    );
}

#[test]
fn structured_values() {
    let out = TASKS
        .call(
            "shift",
            json!([{"x": 1.0, "y": 2.0}]),
            json!({"by": [0.5, -1]}),
        )
        .unwrap();
    assert_eq!(out, json!({"x": 1.5, "y": 1.0}));
    assert_eq!(
        TASKS
            .call("untyped", json!([[1, {"a": null}]]), json!({}))
            .unwrap(),
        json!([1, {"a": null}])
    );
}

#[test]
fn errors_from_the_task() {
    let err = run("untyped", "[null]", "{}").unwrap_err();
    assert_eq!(err, TaskError::new("Exception", "null is not allowed"));
}

#[test]
fn retry_requests() {
    testing::set_job(JobInfo {
        retries: 1,
        ..JobInfo::default()
    });
    let err = run("retries", "[]", "{}").unwrap_err();
    assert_eq!(err.kind, "Retry");
    let wit = crate::__private::to_wit(err);
    assert_eq!(wit.retry.unwrap().countdown_ms, Some(1500));

    testing::set_job(JobInfo {
        retries: 2,
        ..JobInfo::default()
    });
    assert_eq!(run("retries", "[]", "{}").unwrap(), "2");
    let wit = crate::__private::to_wit(TaskError::new("X", "y"));
    assert!(wit.retry.is_none());
    let wit = crate::__private::to_wit(TaskError::retry("later"));
    assert_eq!(wit.retry.unwrap().countdown_ms, None);
}

#[test]
fn unencodable_result() {
    let err = run("bad_output", "[]", "{}").unwrap_err();
    assert_eq!(err.kind, "EncodeError");
}

#[test]
fn not_registered() {
    let err = run("nope", "[]", "{}").unwrap_err();
    assert_eq!(err.kind, "NotRegistered");
    assert!(err.message.contains("'nope'"), "{}", err.message);
    assert!(err.message.contains("add, mul"), "{}", err.message);
    let err = TASKS.__wit_run("nope", "[]", "{}").unwrap_err();
    assert_eq!(err.kind, "NotRegistered");
}

#[test]
fn malformed_args() {
    let err = run("add", "[1, 2", "{}").unwrap_err();
    assert_eq!(err.kind, "DecodeError");
    assert!(err.message.starts_with("add() args are not valid JSON"));
    let err = run("add", "[1, 2]", "{").unwrap_err();
    assert_eq!(err.kind, "DecodeError");
    assert!(err.message.starts_with("add() kwargs are not valid JSON"));
    assert_eq!(
        type_error("add", r#"{"a": 1}"#, "{}"),
        "add() args must be a JSON array, not an object"
    );
    assert_eq!(
        type_error("add", "[1, 2]", "[]"),
        "add() kwargs must be a JSON object, not an array"
    );
}

#[test]
fn host_services_natively() {
    testing::reset();
    assert_eq!(crate::job(), JobInfo::default());
    testing::set_job(JobInfo {
        id: "j1".into(),
        task: "add".into(),
        retries: 3,
        queue: "celery".into(),
    });
    assert_eq!(crate::job().id, "j1");

    assert_eq!(testing::last_progress(), None);
    crate::progress(3, 10);
    assert_eq!(testing::last_progress(), Some((3, 10)));

    crate::log::info("plain");
    let n = 2;
    crate::log::warn!("formatted {n}");
    crate::log::log!(crate::log::Level::Trace, "at {}", "trace");
    crate::log::error(String::from("owned"));
    use crate::log::Level::*;
    assert_eq!(
        testing::take_logs(),
        vec![
            (Info, "plain".to_string()),
            (Warn, "formatted 2".to_string()),
            (Trace, "at trace".to_string()),
            (Error, "owned".to_string()),
        ]
    );
    assert!(testing::take_logs().is_empty());
    testing::reset();
    assert_eq!(crate::job(), JobInfo::default());
}
