//! Loading task files: validate, compile (or load the precompiled artifact), and
//! pre-link them into a [`TaskModule`] ready to instantiate per job.

use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::component::InstancePre as ComponentInstancePre;
use wasmtime::{InstancePre, Module};
use wasmtime_wasi::p2::bindings::CommandPre;

use super::command::CommandState;
use super::component::{ComponentState, TaskPre};

/// A task file ready to run: compiled, linked, instantiated per job.
pub struct TaskModule {
    /// Content hash (blake3, hex) of the wasm bytes: the file's version.
    pub hash: String,
    /// What kind of task file it is.
    pub kind: ModuleKind,
    /// Task names a component declares through its `tasks` export (empty for commands,
    /// whose one task is named after the file).
    pub tasks: Vec<String>,
    /// The wasm bytes the module was loaded from, so the exact version can be sent to
    /// another process (the prefork pool's children load it by these bytes, not by a
    /// path that hot reload may have changed since).
    pub bytes: Arc<[u8]>,
}

impl std::fmt::Debug for TaskModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskModule")
            .field("hash", &self.hash)
            .field("kind", &self.kind.name())
            .field("tasks", &self.tasks)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// The three kinds of task file Sprout runs.
pub enum ModuleKind {
    /// A component of world `sprout:task/task` (the guest SDK's output).
    Task(TaskPre<ComponentState>),
    /// A WASI p2 command component (`wasi:cli/run`).
    CommandComponent(CommandPre<ComponentState>),
    /// A WASI p1 command module (`_start`).
    CommandModule(InstancePre<CommandState>),
}

impl ModuleKind {
    /// A short name for listings: `task`, `wasi-command (p2)`, `wasi-command (p1)`.
    pub fn name(&self) -> &'static str {
        match self {
            ModuleKind::Task(_) => "task",
            ModuleKind::CommandComponent(_) => "wasi-command (p2)",
            ModuleKind::CommandModule(_) => "wasi-command (p1)",
        }
    }

    /// True for WASI commands (one task per file, JSON over stdio).
    pub fn is_command(&self) -> bool {
        !matches!(self, ModuleKind::Task(_))
    }
}

/// Why a file cannot be used as a task file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Could not read the file.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is larger than the worker accepts (`Sandbox::set_max_task_file_bytes`).
    #[error("the file is {size} bytes, over the {max}-byte limit for task files")]
    TooLarge {
        /// The file's size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// Over one of the worker's [`ShapeCaps`](super::ShapeCaps) (too many functions,
    /// too much code, ...): refused before compiling.
    #[error("refused before compiling: {0}")]
    Shape(#[from] super::ShapeError),
    /// Not a WebAssembly binary at all.
    #[error("not a WebAssembly file: {0}")]
    NotWasm(String),
    /// Cranelift or the validator rejected it.
    #[error("the wasm does not compile: {0}")]
    Compile(String),
    /// It is wasm, but does not provide what Sprout needs.
    #[error("{0}")]
    WrongShape(String),
    /// Instantiating it to list its tasks failed.
    #[error("instantiating it to list its tasks failed: {0}")]
    Inspect(String),
}

/// What the first bytes of a file say it is.
pub(super) enum Format {
    Component,
    CoreModule,
}

/// Reads the wasm header: `\0asm` then version 1 (core module) or 0x0d layer 1
/// (component).
pub(super) fn sniff(bytes: &[u8]) -> Result<Format, LoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::NotWasm(format!(
            "missing the \\0asm header ({} bytes, starts with {:02x?})",
            bytes.len(),
            &bytes[..bytes.len().min(8)]
        )));
    }
    match &bytes[4..8] {
        [1, 0, 0, 0] => Ok(Format::CoreModule),
        [0x0d, 0, 1, 0] => Ok(Format::Component),
        other => Err(LoadError::NotWasm(format!(
            "unknown wasm version/layer {other:02x?}"
        ))),
    }
}

/// Pre-links a compiled component as a Sprout task, or else as a WASI command.
pub(super) fn link_component(
    pre: ComponentInstancePre<ComponentState>,
) -> Result<ModuleKind, LoadError> {
    let task_err = match TaskPre::new(pre.clone()) {
        Ok(task) => return Ok(ModuleKind::Task(task)),
        Err(e) => e,
    };
    match CommandPre::new(pre) {
        Ok(command) => Ok(ModuleKind::CommandComponent(command)),
        Err(_) => Err(LoadError::WrongShape(format!(
            "the component exports neither the Sprout task world (sprout:task/task@0.1.0: \
             `tasks` and `run`) nor `wasi:cli/run`: {task_err:#}"
        ))),
    }
}

/// Checks that a core module is a WASI command.
pub(super) fn check_command_module(module: &Module) -> Result<(), LoadError> {
    if module.get_export("_start").is_none() {
        return Err(LoadError::WrongShape(
            "the core module has no `_start` export: it is not a WASI command. Sprout task \
             files are components of world sprout:task/task (see the guest SDK) or WASI \
             commands"
                .into(),
        ));
    }
    Ok(())
}
