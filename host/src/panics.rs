//! Panic payloads as text, for the places that catch a panic and turn it into an
//! outcome or a reason (the pools, the worker's job and settle paths).

use std::any::Any;

/// The message of a panic payload (`panic!` with a literal or a formatted message).
pub(crate) fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}
