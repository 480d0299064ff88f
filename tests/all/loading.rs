//! Task files that are not usable tasks: each is rejected with a readable reason, and
//! nothing panics.

use sprout::sandbox::LoadError;

use crate::support;

async fn load_error(bytes: Vec<u8>) -> String {
    let sandbox = support::sandbox(4);
    match sandbox.load(bytes).await {
        Ok(module) => panic!("loaded {module:?}"),
        Err(e) => {
            let text = e.to_string();
            assert!(!matches!(e, LoadError::Io { .. }));
            text
        }
    }
}

#[tokio::test]
async fn garbage_bytes_are_not_wasm() {
    let reason = load_error(b"this is not wasm at all".to_vec()).await;
    assert!(reason.contains("not a WebAssembly file"), "{reason}");
}

#[tokio::test]
async fn truncated_wasm_does_not_compile() {
    let mut bytes = std::fs::read(support::task("math")).unwrap();
    bytes.truncate(bytes.len() / 2);
    let reason = load_error(bytes).await;
    assert!(reason.contains("does not compile"), "{reason}");
}

#[tokio::test]
async fn core_module_without_start_is_not_a_command() {
    // `(module)`: a valid core module that exports nothing.
    let reason = load_error(b"\0asm\x01\0\0\0".to_vec()).await;
    assert!(reason.contains("no `_start` export"), "{reason}");
}

#[tokio::test]
async fn component_of_another_world_is_rejected() {
    // The empty component: valid, but exports neither `run` nor `wasi:cli/run`.
    let reason = load_error(b"\0asm\x0d\0\x01\0".to_vec()).await;
    assert!(reason.contains("exports neither the Sprout task world"), "{reason}");
}

#[tokio::test]
async fn the_same_bytes_load_once() {
    let sandbox = support::sandbox(4);
    let bytes = std::fs::read(support::task("math")).unwrap();
    let a = sandbox.load(bytes.clone()).await.unwrap();
    let b = sandbox.load(bytes).await.unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    assert_eq!(a.tasks, vec!["add".to_string(), "mul".to_string()]);
}
