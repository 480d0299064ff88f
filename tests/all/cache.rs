//! The compiled-artifact cache is not a way in: an artifact is native code, so the
//! worker refuses a cache directory others can write or another user owns, and any
//! artifact file that is not its own and private — through the real `sprout run`.

use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};

use crate::support::{Workdir, stderr, stdout, task};

/// `sprout run FILE TASK ARGS` with the artifact cache in `cache`.
fn run(w: &Workdir, cache: &Path, file: &str, name: &str, args: &str) -> std::process::Output {
    let file = task(file);
    w.sprout(&["run", file.to_str().unwrap(), name, args])
        .env("SPROUT_CACHE_DIR", cache)
        .output()
        .expect("run sprout")
}

/// The artifacts in `dir`.
fn artifacts(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_world_writable_cache_directory_is_refused_and_left_untouched() {
    let w = Workdir::new();
    let cache = w.path("shared-cache");
    std::fs::create_dir(&cache).unwrap();
    chmod(&cache, 0o777);
    let out = run(&w, &cache, "math", "add", "[1, 2]");
    assert_eq!(stdout(&out).trim(), "3", "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refusing the compiled-artifact cache")
            && stderr(&out).contains("writable by its group or others"),
        "{}",
        stderr(&out)
    );
    assert!(artifacts(&cache).is_empty(), "nothing written to it");
}

#[test]
fn a_cache_directory_of_another_user_is_refused() {
    let w = Workdir::new();
    let cache = w.path("foreign-cache");
    std::fs::create_dir(&cache).unwrap();
    chmod(&cache, 0o700);
    // Tests run as root on CI and here; elsewhere chown is refused and there is
    // nothing to test.
    if chown(&cache, Some(65534), Some(65534)).is_err() {
        eprintln!("SKIPPED: cannot chown (not root)");
        return;
    }
    let out = run(&w, &cache, "math", "add", "[1, 2]");
    assert_eq!(stdout(&out).trim(), "3", "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is owned by uid 65534"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_new_cache_directory_is_private() {
    let w = Workdir::new();
    let cache = w.path("new/cache");
    let out = run(&w, &cache, "math", "add", "[1, 2]");
    assert_eq!(stdout(&out).trim(), "3", "{}", stderr(&out));
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert_eq!(artifacts(&cache).len(), 1, "the artifact is cached there");
}

/// An artifact planted under another task file's name is loaded when it is the
/// worker's own and private (so planting works), and refused as soon as others could
/// have written it or another user owns it.
#[test]
fn a_planted_artifact_is_not_loaded_unless_it_is_private_and_ours() {
    let w = Workdir::new();
    let cache = w.path("cache");
    // The real artifacts of two task files.
    assert!(run(&w, &cache, "echo", "echo", "[1]").status.success());
    let [echo_artifact] = artifacts(&cache).try_into().unwrap();
    assert!(run(&w, &cache, "math", "add", "[1, 2]").status.success());
    let math_artifact = artifacts(&cache)
        .into_iter()
        .find(|p| *p != echo_artifact)
        .expect("math's artifact");
    // Plant echo's code where math's artifact belongs.
    std::fs::copy(&echo_artifact, &math_artifact).unwrap();

    // Private and ours: it is what the cache loads (math no longer provides `add`).
    chmod(&math_artifact, 0o600);
    let out = run(&w, &cache, "math", "add", "[1, 2]");
    assert!(
        !out.status.success(),
        "the planted artifact was loaded: {}",
        stderr(&out)
    );

    // Writable by others: ignored, math is compiled afresh and adds.
    chmod(&math_artifact, 0o666);
    let out = run(&w, &cache, "math", "add", "[1, 2]");
    assert_eq!(stdout(&out).trim(), "3", "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not loading a compiled artifact"),
        "{}",
        stderr(&out)
    );

    // Owned by another user: ignored too.
    std::fs::copy(&echo_artifact, &math_artifact).unwrap();
    chmod(&math_artifact, 0o644);
    if chown(&math_artifact, Some(65534), Some(65534)).is_ok() {
        let out = run(&w, &cache, "math", "add", "[1, 2]");
        assert_eq!(stdout(&out).trim(), "3", "{}", stderr(&out));
        assert!(
            stderr(&out).contains("is owned by uid 65534"),
            "{}",
            stderr(&out)
        );
    }
}
