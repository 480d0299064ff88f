//! Python sources → task files, with `componentize-py` (pinned:
//! [`COMPONENTIZE_PY_VERSION`]).
//!
//! The build happens in a scratch folder holding the WIT (`sprout:python/python-task`:
//! the `sprout:task` world plus outgoing HTTP and the environment), the `sprout_task`
//! SDK this binary carries, an entry module that imports the author's module (which
//! registers its tasks) and exports the SDK's `WitWorld`, and the bundled dependencies.
//! componentize-py runs the imports once at build time and snapshots the interpreter,
//! so a job starts with the module already imported.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{BuildError, RemoveOnDrop, find_program, io_err, run_tool};

/// The componentize-py release the WIT and the SDK were verified with.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// Environment variable naming the componentize-py program to use.
pub const COMPONENTIZE_PY_ENV: &str = "SPROUT_COMPONENTIZE_PY";

/// Environment variable naming the venv that holds componentize-py (default: the
/// repository's `target/python-venv`, which `guest-sdk/python/setup_venv.sh` makes).
pub const PYTHON_VENV_ENV: &str = "SPROUT_PYTHON_VENV";

/// The SDK, as `sprout build` puts it in every Python task file.
const SDK: &[(&str, &str)] = &[
    (
        "__init__.py",
        include_str!("../../../guest-sdk/python/sprout_task/__init__.py"),
    ),
    (
        "_errors.py",
        include_str!("../../../guest-sdk/python/sprout_task/_errors.py"),
    ),
    (
        "_host.py",
        include_str!("../../../guest-sdk/python/sprout_task/_host.py"),
    ),
    (
        "_registry.py",
        include_str!("../../../guest-sdk/python/sprout_task/_registry.py"),
    ),
    (
        "_component.py",
        include_str!("../../../guest-sdk/python/sprout_task/_component.py"),
    ),
    (
        "http.py",
        include_str!("../../../guest-sdk/python/sprout_task/http.py"),
    ),
    (
        "testing.py",
        include_str!("../../../guest-sdk/python/sprout_task/testing.py"),
    ),
];

/// The WIT folder: the Python world, WASI 0.2.12 (as wasmtime 48 ships it) and the
/// one `sprout:task` contract of the repository.
const WIT: &[(&str, &str)] = &[
    (
        "world.wit",
        include_str!("../../../guest-sdk/python/wit/world.wit"),
    ),
    ("deps/task/task.wit", include_str!("../../../wit/task.wit")),
    (
        "deps/http/http.wit",
        include_str!("../../../guest-sdk/python/wit/deps/http/http.wit"),
    ),
    (
        "deps/io/io.wit",
        include_str!("../../../guest-sdk/python/wit/deps/io/io.wit"),
    ),
    (
        "deps/clocks/clocks.wit",
        include_str!("../../../guest-sdk/python/wit/deps/clocks/clocks.wit"),
    ),
    (
        "deps/random/random.wit",
        include_str!("../../../guest-sdk/python/wit/deps/random/random.wit"),
    ),
    (
        "deps/cli/cli.wit",
        include_str!("../../../guest-sdk/python/wit/deps/cli/cli.wit"),
    ),
    (
        "deps/filesystem/filesystem.wit",
        include_str!("../../../guest-sdk/python/wit/deps/filesystem/filesystem.wit"),
    ),
    (
        "deps/sockets/sockets.wit",
        include_str!("../../../guest-sdk/python/wit/deps/sockets/sockets.wit"),
    ),
];

/// The world the task file targets (in `world.wit`).
const WORLD: &str = "python-task";
/// The generated entry module.
const ENTRY: &str = "_sprout_entry";
/// Top-level module names the build itself uses.
const RESERVED: &[&str] = &[
    "sprout_task",
    "wit_world",
    "componentize_py_types",
    "componentize_py_runtime",
    "componentize_py_async_support",
    "poll_loop",
    ENTRY,
];

/// Checks that `path` (a `.py` file or a package folder) names an importable module.
///
/// # Errors
/// [`BuildError::Source`]: not a Python identifier, or a name the build reserves.
pub fn check_module_name(path: &Path) -> Result<(), BuildError> {
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let name = abs
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c == '_' || c.is_alphabetic())
        && name.chars().all(|c| c == '_' || c.is_alphanumeric());
    if !valid {
        return Err(BuildError::Source(format!(
            "{}: {name:?} is not a Python module name (letters, digits and _, not starting \
             with a digit); rename the file",
            path.display()
        )));
    }
    if RESERVED.contains(&name.as_str()) {
        return Err(BuildError::Source(format!(
            "{}: the module name {name:?} is used by the build itself; rename the file",
            path.display()
        )));
    }
    Ok(())
}

/// Where componentize-py is looked for, in order, after `$SPROUT_COMPONENTIZE_PY`:
/// `PATH`, `$SPROUT_PYTHON_VENV/bin`, `./target/python-venv/bin`, and the
/// `python-venv/bin` beside the folder of this executable (`target/release/sprout` →
/// `target/python-venv/bin`).
fn venv_bins() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(venv) = std::env::var_os(PYTHON_VENV_ENV) {
        dirs.push(PathBuf::from(venv).join("bin"));
    }
    dirs.push(PathBuf::from("target/python-venv/bin"));
    if let Ok(exe) = std::env::current_exe()
        && let Some(target) = exe.parent().and_then(Path::parent)
    {
        dirs.push(target.join("python-venv/bin"));
    }
    dirs
}

/// The componentize-py program to run, checked to be the pinned version.
///
/// # Errors
/// [`BuildError::MissingTool`] naming what to install: not found, or another version.
pub fn componentize_py() -> Result<PathBuf, BuildError> {
    let install = format!(
        "install it with `python3 -m pip install componentize-py=={COMPONENTIZE_PY_VERSION}` \
         (into a venv on PATH), or run guest-sdk/python/setup_venv.sh from the Sprout \
         repository (it makes target/python-venv), or point {COMPONENTIZE_PY_ENV} at it"
    );
    let program = match std::env::var_os(COMPONENTIZE_PY_ENV) {
        Some(p) => PathBuf::from(p),
        None => find_program("componentize-py", &venv_bins()).ok_or_else(|| {
            BuildError::MissingTool(format!(
                "building a Python task needs componentize-py {COMPONENTIZE_PY_VERSION}, \
                 which is not on PATH nor in a Sprout venv; {install}"
            ))
        })?,
    };
    // Absolute: componentize-py runs in the scratch folder.
    let program = std::fs::canonicalize(&program).unwrap_or(program);
    let out = Command::new(&program)
        .arg("--version")
        .output()
        .map_err(|e| {
            BuildError::MissingTool(format!("cannot run {} ({e}); {install}", program.display()))
        })?;
    let version = String::from_utf8_lossy(&out.stdout);
    let version = version.trim().trim_start_matches("componentize-py").trim();
    if version != COMPONENTIZE_PY_VERSION {
        return Err(BuildError::MissingTool(format!(
            "{} is componentize-py {version:?}; Sprout's Python SDK is built and tested \
             with {COMPONENTIZE_PY_VERSION}: {install}",
            program.display()
        )));
    }
    Ok(program)
}

/// Builds the module or package at `src` into the component at `out`. Returns the
/// bundled dependencies (`name==version`).
///
/// # Errors
/// See [`super::build`].
pub fn build(src: &Path, is_package: bool, out: &Path) -> Result<Vec<String>, BuildError> {
    let program = componentize_py()?;
    let src = std::fs::canonicalize(src).map_err(io_err(format!("reading {}", src.display())))?;
    let name = src
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parent = src.parent().unwrap_or(Path::new("/")).to_path_buf();
    let scratch = std::env::temp_dir().join(format!("sprout-build-{}", uuid::Uuid::new_v4()));
    let _cleanup = RemoveOnDrop(scratch.clone());
    write_tree(&scratch.join("wit"), WIT)?;
    write_tree(&scratch.join("sdk/sprout_task"), SDK)?;

    // The dependencies: requirements.txt or pyproject.toml in the module's folder
    // (for a package: inside it, else beside it).
    let dep_dirs: Vec<PathBuf> = if is_package {
        vec![src.clone(), parent.clone()]
    } else {
        vec![parent.clone()]
    };
    let site = scratch.join("site");
    let bundled = match dep_dirs
        .iter()
        .find_map(|d| Requirements::find(d).transpose())
    {
        Some(reqs) => bundle(&program, &reqs?, &scratch, &site)?,
        None => Vec::new(),
    };

    let mut entry = format!("import {name}\n");
    if is_package && (src.join("tasks.py").is_file() || src.join("tasks/__init__.py").is_file()) {
        // Celery's autodiscovery convention: a package's tasks live in `tasks`.
        entry.push_str(&format!("import {name}.tasks\n"));
    }
    entry.push_str(&format!(
        "import sprout_task\n\
         if not sprout_task.registered():\n    \
             raise SystemExit('sprout build: {name} defines no task: decorate a function \
         with @sprout_task.task')\n\
         from sprout_task._component import WitWorld\n"
    ));
    write_tree(&scratch.join("entry"), &[(&format!("{ENTRY}.py"), &entry)])?;

    let mut cmd = Command::new(&program);
    cmd.current_dir(&scratch)
        .env_remove("VIRTUAL_ENV")
        .env_remove("PYTHONPATH")
        .env_remove("PYTHONHOME")
        .args(["-q", "-d", "wit", "-w", WORLD, "componentize", ENTRY])
        .args(["-p", "sdk", "-p", "entry", "-p"])
        .arg(&parent);
    if site.is_dir() {
        cmd.arg("-p").arg(&site);
    }
    cmd.arg("-o").arg(out);
    run_tool(&mut cmd, &format!("componentize-py ({})", src.display()))?;
    Ok(bundled)
}

fn write_tree(root: &Path, files: &[(&str, &str)]) -> Result<(), BuildError> {
    for (rel, text) in files {
        let path = root.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
        std::fs::write(&path, text).map_err(io_err(format!("writing {}", path.display())))?;
    }
    Ok(())
}

/// Dependencies declared in a folder.
#[derive(Debug)]
struct Requirements {
    /// The folder relative paths in the list are resolved from.
    dir: PathBuf,
    /// A requirements file for pip (`requirements.txt`, or one written from
    /// `pyproject.toml`'s `[project] dependencies`).
    file: Option<PathBuf>,
    /// The dependencies from `pyproject.toml`, when that is where they came from.
    listed: Vec<String>,
}

impl Requirements {
    /// `requirements.txt` or `pyproject.toml` in `dir`, if either declares anything.
    fn find(dir: &Path) -> Result<Option<Requirements>, BuildError> {
        let txt = dir.join("requirements.txt");
        if txt.is_file() {
            return Ok(Some(Requirements {
                dir: dir.to_path_buf(),
                file: Some(txt),
                listed: Vec::new(),
            }));
        }
        let pyproject = dir.join("pyproject.toml");
        if !pyproject.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&pyproject)
            .map_err(io_err(format!("reading {}", pyproject.display())))?;
        let doc: toml::Table = toml::from_str(&text)
            .map_err(|e| BuildError::Source(format!("{}: {e}", pyproject.display())))?;
        let deps = doc
            .get("project")
            .and_then(|p| p.get("dependencies"))
            .and_then(|d| d.as_array());
        let Some(deps) = deps else {
            return Ok(None);
        };
        let listed = deps
            .iter()
            .map(|d| {
                d.as_str().map(str::to_string).ok_or_else(|| {
                    BuildError::Source(format!(
                        "{}: [project] dependencies must be strings",
                        pyproject.display()
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((!listed.is_empty()).then(|| Requirements {
            dir: dir.to_path_buf(),
            file: None,
            listed,
        }))
    }
}

/// The Python that runs pip: the one beside componentize-py (its venv), else `python3`.
fn python_for(componentize_py: &Path) -> PathBuf {
    let beside = componentize_py.with_file_name("python");
    if beside.is_file() {
        return beside;
    }
    find_program("python3", &[]).unwrap_or_else(|| PathBuf::from("python3"))
}

/// Collects the dependencies as wheels (building pure-Python source distributions),
/// refuses any wheel that is not pure Python, and installs them into `site`.
fn bundle(
    componentize_py: &Path,
    reqs: &Requirements,
    scratch: &Path,
    site: &Path,
) -> Result<Vec<String>, BuildError> {
    let python = python_for(componentize_py);
    let wheels = scratch.join("wheels");
    let file = match &reqs.file {
        Some(f) => f.clone(),
        None => {
            let f = scratch.join("requirements-from-pyproject.txt");
            std::fs::write(&f, reqs.listed.join("\n") + "\n")
                .map_err(io_err(format!("writing {}", f.display())))?;
            f
        }
    };
    let mut cmd = Command::new(&python);
    cmd.current_dir(&reqs.dir)
        .env_remove("PYTHONPATH")
        .args([
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--no-build-isolation", "-w"])
        .arg(&wheels)
        .arg("-r")
        .arg(&file);
    run_tool(
        &mut cmd,
        &format!("collecting the dependencies in {}", file.display()),
    )
    .map_err(|e| BuildError::Dependency(e.to_string()))?;
    let mut found = std::fs::read_dir(&wheels)
        .map_err(io_err(format!("reading {}", wheels.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "whl"))
        .collect::<Vec<_>>();
    found.sort();
    let mut native = Vec::new();
    let mut bundled = Vec::new();
    let mut pure = Vec::new();
    for wheel in &found {
        let tag = WheelName::parse(wheel).ok_or_else(|| {
            BuildError::Dependency(format!("{}: not a wheel file name", wheel.display()))
        })?;
        if tag.is_pure() {
            pure.push((wheel.clone(), tag));
        } else {
            native.push(format!(
                "{} {} ({}-{}-{})",
                tag.dist, tag.version, tag.python, tag.abi, tag.platform
            ));
        }
    }
    // A wheel tagged pure Python may still carry a compiled library (a mis-tagged or
    // hand-made wheel): look inside.
    let inside = native_members(&python, pure.iter().map(|(w, _)| w.as_path()))?;
    for (wheel, tag) in &pure {
        match inside.iter().find(|(w, _)| w == wheel) {
            Some((_, member)) => native.push(format!(
                "{} {} (tagged pure Python, but it holds {member})",
                tag.dist, tag.version
            )),
            None => bundled.push(format!("{}=={}", tag.dist, tag.version)),
        }
    }
    if !native.is_empty() {
        return Err(BuildError::Dependency(format!(
            "a task file can only bundle pure-Python packages, and these have native \
             extensions (compiled for this machine, not for WebAssembly): {}; drop them from \
             {} or use a pure-Python alternative",
            native.join(", "),
            reqs.file
                .as_ref()
                .map(|f| f.display().to_string())
                .unwrap_or_else(|| reqs.dir.join("pyproject.toml").display().to_string())
        )));
    }
    if found.is_empty() {
        return Ok(bundled);
    }
    let mut cmd = Command::new(&python);
    cmd.env_remove("PYTHONPATH")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--no-deps", "--no-index", "--no-compile", "--target"])
        .arg(site)
        .args(&found);
    run_tool(&mut cmd, "installing the dependencies")
        .map_err(|e| BuildError::Dependency(e.to_string()))?;
    Ok(bundled)
}

/// File names a compiled extension or shared library has (`_speedups.cpython-311-x86_64-linux-gnu.so`,
/// `libfoo.so.1`, `x.pyd`, `x.dylib`).
const NATIVE_MEMBERS: &str = r#"
import sys, zipfile
native = (".so", ".pyd", ".dylib", ".dll")
for path in sys.argv[1:]:
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            base = name.rsplit("/", 1)[-1].lower()
            if base.endswith(native) or ".so." in base:
                print(path + "\t" + name)
                break
"#;

/// The wheels among `wheels` that hold a compiled library, each with the first such
/// member's name (read with the Python's zipfile).
fn native_members<'a>(
    python: &Path,
    wheels: impl Iterator<Item = &'a Path>,
) -> Result<Vec<(PathBuf, String)>, BuildError> {
    let wheels: Vec<&Path> = wheels.collect();
    if wheels.is_empty() {
        return Ok(Vec::new());
    }
    let mut cmd = Command::new(python);
    cmd.env_remove("PYTHONPATH")
        .args(["-c", NATIVE_MEMBERS])
        .args(&wheels);
    let stdout = run_tool(&mut cmd, "looking inside the dependencies' wheels")
        .map_err(|e| BuildError::Dependency(e.to_string()))?;
    Ok(String::from_utf8_lossy(&stdout)
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(wheel, member)| (PathBuf::from(wheel), member.to_string()))
        .collect())
}

/// The parts of a wheel's file name (PEP 427): `dist-version(-build)?-python-abi-platform.whl`.
#[derive(Debug, PartialEq, Eq)]
struct WheelName {
    dist: String,
    version: String,
    python: String,
    abi: String,
    platform: String,
}

impl WheelName {
    fn parse(path: &Path) -> Option<WheelName> {
        let name = path.file_name()?.to_str()?.strip_suffix(".whl")?;
        let parts: Vec<&str> = name.split('-').collect();
        let (dist, version, rest) = match parts.len() {
            5 => (parts[0], parts[1], &parts[2..]),
            6 => (parts[0], parts[1], &parts[3..]),
            _ => return None,
        };
        Some(WheelName {
            dist: dist.to_string(),
            version: version.to_string(),
            python: rest[0].to_string(),
            abi: rest[1].to_string(),
            platform: rest[2].to_string(),
        })
    }

    /// Pure Python: no ABI and any platform (compressed tag sets included).
    fn is_pure(&self) -> bool {
        self.abi.split('.').all(|a| a == "none") && self.platform.split('.').all(|p| p == "any")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wheel_names_tell_pure_from_native() {
        let pure = WheelName::parse(Path::new("w/six-1.16.0-py2.py3-none-any.whl")).unwrap();
        assert_eq!(
            (pure.dist.as_str(), pure.version.as_str()),
            ("six", "1.16.0")
        );
        assert!(pure.is_pure());
        let native = WheelName::parse(Path::new(
            "orjson-3.9.0-cp311-cp311-manylinux_2_17_x86_64.whl",
        ))
        .unwrap();
        assert!(!native.is_pure());
        let abi3 = WheelName::parse(Path::new("x-1-1build-cp37-abi3-linux_x86_64.whl")).unwrap();
        assert!(!abi3.is_pure());
        assert!(WheelName::parse(Path::new("nonsense.whl")).is_none());
    }

    #[test]
    fn module_names_must_be_importable() {
        let dir = std::env::temp_dir().join(format!("sprout-names-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for bad in ["my-tasks.py", "1st.py", "sprout_task.py"] {
            let p = dir.join(bad);
            std::fs::write(&p, "").unwrap();
            assert!(check_module_name(&p).is_err(), "{bad}");
        }
        let good = dir.join("shop_2.py");
        std::fs::write(&good, "").unwrap();
        assert!(check_module_name(&good).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
