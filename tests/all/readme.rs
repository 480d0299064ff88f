//! README.md, followed literally: every ```sh block is runnable and is run here, in
//! order, each in a fresh temporary directory laid out like a checkout after `make
//! tasks` (`target/tasks` holds the built example tasks) with `sprout` on PATH (what
//! `make install` gives). Blocks fenced ```console are shown, not run: commands that
//! need services, a terminal or the whole build (`make demo`).
//!
//! A block fails the test when it exits non-zero (it runs under `bash -e -o pipefail`)
//! or runs longer than [`BLOCK_TIMEOUT`]; whatever it started in the background is
//! killed with it (it runs in its own process group).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{self, cache_dir, repo_root, sprout_bin};

/// The longest one README block may take.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(180);

/// The README's runnable blocks: (line of the opening fence, the script).
pub fn runnable_blocks(readme: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in readme.lines().enumerate() {
        match &mut current {
            None if line.trim_end() == "```sh" => current = Some((n + 1, String::new())),
            Some(_) if line.trim_end() == "```" => blocks.extend(current.take()),
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
            None => {}
        }
    }
    blocks
}

/// Kills the block's whole process group when dropped (a failed assertion included).
struct Group(i32);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group we created for the block.
        unsafe { libc::kill(-self.0, libc::SIGKILL) };
    }
}

#[test]
fn readme_shell_blocks_run_as_written() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let blocks = runnable_blocks(&readme);
    assert!(
        blocks.len() >= 3,
        "README.md has {} ```sh blocks; its examples must stay runnable",
        blocks.len()
    );
    let bin_dir = sprout_bin().parent().expect("bin dir").to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for (line, script) in blocks {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("target")).unwrap();
        std::os::unix::fs::symlink(support::tasks_dir(), dir.path().join("target/tasks")).unwrap();
        let started = Instant::now();
        let mut child = Command::new("bash")
            .args(["-e", "-o", "pipefail", "-c", &script])
            .current_dir(dir.path())
            .env("PATH", &path)
            .env("SPROUT_CACHE_DIR", cache_dir())
            .env_remove("SPROUT_BROKER")
            .env_remove("SPROUT_TASKS")
            .env_remove("SPROUT_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("run bash");
        let group = Group(child.id() as i32);
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let out_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() > BLOCK_TIMEOUT {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        drop(group);
        let _ = child.wait();
        let (out, err) = (out_reader.join().unwrap(), err_reader.join().unwrap());
        match status {
            Some(s) if s.success() => {
                eprintln!(
                    "README.md:{line}: ok in {:.1} s",
                    started.elapsed().as_secs_f64()
                )
            }
            other => panic!(
                "README.md:{line}: the block {} :\n{script}\n--- stdout\n{out}\n--- stderr\n{err}",
                match other {
                    Some(s) => format!("exited with {s}"),
                    None => format!("ran over {BLOCK_TIMEOUT:?}"),
                }
            ),
        }
    }
}

#[test]
fn blocks_are_found_by_their_fence() {
    let text = "a\n```sh\necho 1\necho 2\n```\n```console\nmake demo\n```\n```sh\nx\n```\n";
    let blocks = runnable_blocks(text);
    assert_eq!(
        blocks,
        [(2, "echo 1\necho 2\n".to_string()), (9, "x\n".to_string())]
    );
}
