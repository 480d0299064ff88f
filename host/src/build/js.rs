//! JavaScript sources → task files, with componentize-js (pinned:
//! [`COMPONENTIZE_JS_VERSION`]) run through its library API by `node`.
//!
//! componentize-js compiles one ES module: the build writes the `sprout-task` helper
//! this binary carries, then the task file with its `import { … } from "sprout-task"`
//! turned into a destructuring of the helper's namespace.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{BuildError, RemoveOnDrop, find_program, io_err, run_tool};

/// The componentize-js release the helper was verified with.
pub const COMPONENTIZE_JS_VERSION: &str = "0.23.0";

/// Environment variable naming the folder componentize-js is installed in (its
/// `node_modules` parent; default: the repository's `target/js-tools`).
pub const JS_TOOLS_ENV: &str = "SPROUT_JS_TOOLS";

const HELPER: &str = include_str!("../../../guest-sdk/js/sprout-task.js");
const RUNNER: &str = include_str!("../../../guest-sdk/js/componentize.mjs");
const TASK_WIT: &str = include_str!("../../../wit/task.wit");

/// The folders componentize-js is looked for in, in order.
fn tool_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os(JS_TOOLS_ENV) {
        dirs.push(PathBuf::from(dir));
    }
    dirs.push(PathBuf::from("target/js-tools"));
    if let Ok(exe) = std::env::current_exe()
        && let Some(target) = exe.parent().and_then(Path::parent)
    {
        dirs.push(target.join("js-tools"));
    }
    dirs
}

fn entry_in(dir: &Path) -> PathBuf {
    dir.join("node_modules/@bytecodealliance/componentize-js/src/componentize.js")
}

/// Rewrites the task file's imports of `sprout-task` into destructurings of
/// `__sprout`: `import { task, log as say } from "sprout-task";` →
/// `const { task, log: say } = __sprout;`.
///
/// # Errors
/// A default or namespace import of `sprout-task` (only named imports are supported).
pub fn rewrite_imports(source: &str) -> Result<String, String> {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find("import") {
        let (before, from_import) = rest.split_at(at);
        out.push_str(before);
        let Some(end) = from_import.find(';').or_else(|| from_import.find('\n')) else {
            out.push_str(from_import);
            return Ok(out);
        };
        let statement = &from_import[..end];
        let is_ours = statement.contains("\"sprout-task\"") || statement.contains("'sprout-task'");
        let at_line_start = before.is_empty() || before.ends_with('\n');
        if !is_ours || !at_line_start {
            out.push_str("import");
            rest = &from_import["import".len()..];
            continue;
        }
        let names = statement
            .split_once('{')
            .and_then(|(_, r)| r.split_once('}'))
            .map(|(names, _)| names)
            .ok_or_else(|| {
                format!(
                    "`{}`: import named bindings from \"sprout-task\" (`import {{ task }} from \"sprout-task\"`)",
                    statement.trim()
                )
            })?;
        let names: Vec<String> = names
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|n| match n.split_once(" as ") {
                Some((name, alias)) => format!("{}: {}", name.trim(), alias.trim()),
                None => n.to_string(),
            })
            .collect();
        out.push_str(&format!("const {{ {} }} = __sprout", names.join(", ")));
        rest = &from_import[end..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Builds the JavaScript module at `src` into the component at `out`.
///
/// # Errors
/// See [`super::build`].
pub fn build(src: &Path, out: &Path) -> Result<(), BuildError> {
    let install = format!(
        "install it with `npm install --prefix target/js-tools \
         @bytecodealliance/componentize-js@{COMPONENTIZE_JS_VERSION}` or \
         guest-sdk/js/setup_tools.sh from the Sprout repository, or point {JS_TOOLS_ENV} \
         at the folder holding its node_modules"
    );
    let node = find_program("node", &[]).ok_or_else(|| {
        BuildError::MissingTool(format!(
            "building a JavaScript task needs node (and componentize-js): install Node.js ≥ 18; {install}"
        ))
    })?;
    let entry = tool_dirs()
        .into_iter()
        .map(|d| entry_in(&d))
        .find(|e| e.is_file())
        .map(|e| std::fs::canonicalize(&e).unwrap_or(e))
        .ok_or_else(|| {
            BuildError::MissingTool(format!(
                "building a JavaScript task needs componentize-js {COMPONENTIZE_JS_VERSION}, \
                 which is not installed; {install}"
            ))
        })?;
    let source =
        std::fs::read_to_string(src).map_err(io_err(format!("reading {}", src.display())))?;
    let body = rewrite_imports(&source)
        .map_err(|e| BuildError::Source(format!("{}: {e}", src.display())))?;
    let scratch = std::env::temp_dir().join(format!("sprout-build-js-{}", uuid::Uuid::new_v4()));
    let _cleanup = RemoveOnDrop(scratch.clone());
    std::fs::create_dir_all(scratch.join("wit"))
        .map_err(io_err(format!("creating {}", scratch.display())))?;
    let combined = scratch.join("task.js");
    let write = |path: &Path, text: &str| {
        std::fs::write(path, text).map_err(io_err(format!("writing {}", path.display())))
    };
    // `helper_lines` counts the lines before `body`.
    write(
        &combined,
        &format!("{HELPER}\n// ---- {} ----\n{body}", src.display()),
    )?;
    write(&scratch.join("wit/task.wit"), TASK_WIT)?;
    write(&scratch.join("componentize.mjs"), RUNNER)?;
    let mut cmd = Command::new(node);
    cmd.current_dir(&scratch)
        .arg(scratch.join("componentize.mjs"))
        .arg(&entry)
        .arg(&combined)
        .arg(scratch.join("wit"))
        .arg("task")
        .arg(out);
    run_tool(&mut cmd, &format!("componentize-js ({})", src.display())).map_err(|e| match e {
        // componentize-js runs the module's top level at build time (a registration
        // error ends the build there) and reports lines of the combined file.
        BuildError::Compile(message) => BuildError::Compile(format!(
            "{message}\nnote: componentize-js numbers lines of the helper and {} together: \
             its source.js line N is line N - {} of {}",
            src.display(),
            helper_lines(),
            src.display()
        )),
        other => other,
    })?;
    Ok(())
}

/// How many lines precede the author's file in the combined module `build` writes.
fn helper_lines() -> usize {
    HELPER.matches('\n').count() + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sprout_task_imports_become_destructurings() {
        let src = "import { task, log as say } from \"sprout-task\";\nimport x from 'other';\ntask('a', () => 1);\n";
        let out = rewrite_imports(src).unwrap();
        assert!(
            out.starts_with("const { task, log: say } = __sprout;\n"),
            "{out}"
        );
        assert!(out.contains("import x from 'other';"), "{out}");
        assert!(rewrite_imports("import * as s from \"sprout-task\";").is_err());
    }

    #[test]
    fn helper_lines_counts_what_precedes_the_task_file() {
        let combined = format!("{HELPER}\n// ---- x.js ----\nFIRST\n");
        let first = combined.lines().position(|l| l == "FIRST").unwrap() + 1;
        assert_eq!(first - helper_lines(), 1);
    }
}
