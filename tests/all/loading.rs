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
    assert!(
        reason.contains("exports neither the Sprout task world"),
        "{reason}"
    );
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

#[tokio::test]
async fn compiled_artifacts_are_cached_on_disk_and_a_bad_one_is_recompiled() {
    use sprout::sandbox::{EngineSettings, RunRequest, Sandbox};
    let cache = tempfile::tempdir().unwrap();
    let settings = || EngineSettings {
        max_instances: 4,
        ..EngineSettings::default()
    };
    let bytes = std::fs::read(support::task("math")).unwrap();

    let first = Sandbox::new(settings(), Some(cache.path())).unwrap();
    first.load(bytes.clone()).await.unwrap();
    let artifacts: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    let name = artifacts[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let hash = blake3::hash(&bytes).to_hex().to_string();
    assert!(
        name.starts_with(&hash) && name.ends_with(".cwasm"),
        "{name}"
    );

    // A second process (here: a second engine) loads the artifact instead of compiling.
    let second = Sandbox::new(settings(), Some(cache.path())).unwrap();
    let module = second.load(bytes.clone()).await.unwrap();
    let e = second
        .run(&module, RunRequest::new("add", vec![2.into(), 2.into()]))
        .await;
    assert_eq!(
        e.outcome,
        sprout::model::Outcome::Success { value: 4.into() }
    );

    // A damaged artifact is not trusted: the module is compiled again and still runs.
    std::fs::write(&artifacts[0], b"\0asm garbage").unwrap();
    let third = Sandbox::new(settings(), Some(cache.path())).unwrap();
    let module = third.load(bytes).await.unwrap();
    let e = third
        .run(&module, RunRequest::new("mul", vec![3.into(), 3.into()]))
        .await;
    assert_eq!(
        e.outcome,
        sprout::model::Outcome::Success { value: 9.into() }
    );
}
