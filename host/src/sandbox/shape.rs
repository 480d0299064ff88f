//! The shape check: a task file's declared size, counted before it is compiled.
//!
//! Compiling is the one step of loading whose cost a file's author controls: wasmtime
//! compiles every function, and its cost grows with the number of functions far more
//! than with the file's size (measured on the 2-core dev machine: 1,000,000 empty
//! functions, a 4 MB file, take ~5 GiB and over a minute; 100,000 take 0.68 GiB and
//! 4.9 s; 50,000 take 0.36 GiB and 2.5 s). [`check_shape`] walks the file with
//! `wasmparser` — a core module, or a component and every core module and component
//! nested in it — and refuses it, naming the cap, before anything is compiled. The walk
//! reads section headers and counts; it allocates nothing per function.
//!
//! Caps are totals over the whole file (a component's nested modules add up), so
//! splitting a bomb into many small modules does not get around them.
//!
//! What the caps do not bound (measured, release build, 2 cores, `--no-cache`): a file
//! just under the defaults still costs a real compile — 99,000 functions with 60 MB of
//! code took 32 s and 0.7 GiB peak RSS; one 4 MB function took 7 s and 0.55 GiB. The
//! compile runs in parallel (one function per core), so on a many-core machine the
//! peak grows with the cores. Lower the caps for untrusted task directories; a bounded
//! compile in a child process is not done yet.

use wasmparser::{Parser, Payload};

/// Caps on a task file's shape, checked before it is compiled ([`check_shape`]).
///
/// The defaults are generous for real task files — the example tasks use under 1% of
/// each, and a componentize-py Python component (~18 MB, CPython and its standard
/// library in one core module) fits — and strict where compile cost explodes: the
/// number of functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShapeCaps {
    /// Functions (defined and imported), all modules together. Default 100,000.
    pub max_functions: u64,
    /// Bytes of function bodies (code sections), all modules together. Default 64 MiB.
    pub max_code_bytes: u64,
    /// Bytes of one function body. Default 4 MiB (wasmparser itself refuses over
    /// 7,654,321; one 4 MB function takes ~0.55 GiB and ~7 s to compile).
    pub max_function_bytes: u64,
    /// Data segments, all modules together. Default 100,000.
    pub max_data_segments: u64,
    /// Imports (core and component), all together. Default 10,000.
    pub max_imports: u64,
    /// Tables declared (defined or imported), all modules together. Default 100.
    pub max_tables: u64,
    /// Initial elements of one table. Default 10,000,000.
    pub max_table_elements: u64,
    /// Memories declared (defined or imported), all modules together. Default 100.
    pub max_memories: u64,
    /// Core modules and components nested in a component. Default 1,000.
    pub max_modules: u64,
}

impl Default for ShapeCaps {
    fn default() -> Self {
        ShapeCaps {
            max_functions: 100_000,
            max_code_bytes: 64 << 20,
            max_function_bytes: 4 << 20,
            max_data_segments: 100_000,
            max_imports: 10_000,
            max_tables: 100,
            max_table_elements: 10_000_000,
            max_memories: 100,
            max_modules: 1_000,
        }
    }
}

impl ShapeCaps {
    /// No caps: for a process that loads only files another process already checked
    /// (a prefork child gets each file from its parent).
    pub const UNLIMITED: ShapeCaps = ShapeCaps {
        max_functions: u64::MAX,
        max_code_bytes: u64::MAX,
        max_function_bytes: u64::MAX,
        max_data_segments: u64::MAX,
        max_imports: u64::MAX,
        max_tables: u64::MAX,
        max_table_elements: u64::MAX,
        max_memories: u64::MAX,
        max_modules: u64::MAX,
    };

    /// The caps by name, as [`ShapeCaps::set`] and the `--module-caps` flag know them.
    pub const NAMES: [&'static str; 9] = [
        "functions",
        "code-bytes",
        "function-bytes",
        "data-segments",
        "imports",
        "tables",
        "table-elements",
        "memories",
        "modules",
    ];

    fn slot(&mut self, name: &str) -> Option<&mut u64> {
        Some(match name {
            "functions" => &mut self.max_functions,
            "code-bytes" => &mut self.max_code_bytes,
            "function-bytes" => &mut self.max_function_bytes,
            "data-segments" => &mut self.max_data_segments,
            "imports" => &mut self.max_imports,
            "tables" => &mut self.max_tables,
            "table-elements" => &mut self.max_table_elements,
            "memories" => &mut self.max_memories,
            "modules" => &mut self.max_modules,
            _ => return None,
        })
    }

    /// Sets one cap by name (see [`ShapeCaps::NAMES`]).
    ///
    /// # Errors
    /// An unknown name, with the known ones.
    pub fn set(&mut self, name: &str, value: u64) -> Result<(), String> {
        let slot = self.slot(name).ok_or_else(|| {
            format!(
                "unknown module cap {name:?}; known: {}",
                Self::NAMES.join(", ")
            )
        })?;
        *slot = value;
        Ok(())
    }

    /// Parses `name=value,name=value` (e.g. `functions=200000,code-bytes=134217728`)
    /// over the defaults.
    ///
    /// # Errors
    /// An unknown name, or a value that is not a whole number.
    pub fn parse(spec: &str) -> Result<ShapeCaps, String> {
        let mut caps = ShapeCaps::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected name=value"))?;
            let value: u64 = value
                .trim()
                .replace('_', "")
                .parse()
                .map_err(|_| format!("{part:?}: the value must be a whole number"))?;
            caps.set(name.trim(), value)?;
        }
        Ok(caps)
    }
}

/// A task file over one of its [`ShapeCaps`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the file has {value} {what}, over the cap of {cap} (module cap `{name}`)")]
pub struct ShapeError {
    /// The cap's name in [`ShapeCaps::NAMES`].
    pub name: &'static str,
    /// What was counted, for the message.
    pub what: &'static str,
    /// The count (at the point it went over: later sections are not read).
    pub value: u64,
    /// The cap.
    pub cap: u64,
}

#[derive(Default)]
struct Totals {
    functions: u64,
    code_bytes: u64,
    data_segments: u64,
    imports: u64,
    tables: u64,
    memories: u64,
    modules: u64,
}

fn over(name: &'static str, what: &'static str, value: u64, cap: u64) -> Result<(), ShapeError> {
    if value > cap {
        Err(ShapeError {
            name,
            what,
            value,
            cap,
        })
    } else {
        Ok(())
    }
}

/// Checks `bytes` (a core module or a component) against `caps`.
///
/// Malformed input is not this check's business: what cannot be parsed is left to the
/// compiler, which rejects it with its own message.
///
/// # Errors
/// [`ShapeError`] naming the first cap the file breaks.
pub fn check_shape(bytes: &[u8], caps: &ShapeCaps) -> Result<(), ShapeError> {
    let mut t = Totals::default();
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else {
            return Ok(());
        };
        match payload {
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let Ok(import) = import else { return Ok(()) };
                    t.imports += 1;
                    match import.ty {
                        wasmparser::TypeRef::Func(_) | wasmparser::TypeRef::FuncExact(_) => {
                            t.functions += 1;
                        }
                        wasmparser::TypeRef::Table(table) => {
                            t.tables += 1;
                            over(
                                "table-elements",
                                "initial table elements",
                                table.initial,
                                caps.max_table_elements,
                            )?;
                        }
                        wasmparser::TypeRef::Memory(_) => t.memories += 1,
                        _ => {}
                    }
                    over("imports", "imports", t.imports, caps.max_imports)?;
                }
                over("functions", "functions", t.functions, caps.max_functions)?;
                over("tables", "tables", t.tables, caps.max_tables)?;
                over("memories", "memories", t.memories, caps.max_memories)?;
            }
            Payload::ComponentImportSection(reader) => {
                t.imports += u64::from(reader.count());
                over("imports", "imports", t.imports, caps.max_imports)?;
            }
            Payload::FunctionSection(reader) => {
                t.functions += u64::from(reader.count());
                over("functions", "functions", t.functions, caps.max_functions)?;
            }
            Payload::CodeSectionStart { range, .. } => {
                t.code_bytes += range.len() as u64;
                over(
                    "code-bytes",
                    "bytes of code",
                    t.code_bytes,
                    caps.max_code_bytes,
                )?;
            }
            Payload::CodeSectionEntry(body) => {
                over(
                    "function-bytes",
                    "bytes in one function body",
                    body.range().len() as u64,
                    caps.max_function_bytes,
                )?;
            }
            Payload::DataSection(reader) => {
                t.data_segments += u64::from(reader.count());
                over(
                    "data-segments",
                    "data segments",
                    t.data_segments,
                    caps.max_data_segments,
                )?;
            }
            Payload::TableSection(reader) => {
                t.tables += u64::from(reader.count());
                over("tables", "tables", t.tables, caps.max_tables)?;
                for table in reader {
                    let Ok(table) = table else { return Ok(()) };
                    over(
                        "table-elements",
                        "initial table elements",
                        table.ty.initial,
                        caps.max_table_elements,
                    )?;
                }
            }
            Payload::MemorySection(reader) => {
                t.memories += u64::from(reader.count());
                over("memories", "memories", t.memories, caps.max_memories)?;
            }
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => {
                t.modules += 1;
                over("modules", "nested modules", t.modules, caps.max_modules)?;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_parse_by_name_over_the_defaults() {
        let caps = ShapeCaps::parse("functions=5, code-bytes=1_000").unwrap();
        assert_eq!(caps.max_functions, 5);
        assert_eq!(caps.max_code_bytes, 1000);
        assert_eq!(caps.max_imports, ShapeCaps::default().max_imports);
        assert!(ShapeCaps::parse("nope=1").unwrap_err().contains("known:"));
        assert!(ShapeCaps::parse("functions").is_err());
        assert!(ShapeCaps::parse("functions=x").is_err());
    }

    #[test]
    fn the_function_count_is_checked_before_the_code_is_read() {
        // (module (func) (func) (func)): one type, three functions, three empty bodies.
        let mut wasm = b"\0asm\x01\0\0\0".to_vec();
        wasm.extend([1, 4, 1, 0x60, 0, 0]);
        wasm.extend([3, 4, 3, 0, 0, 0]);
        wasm.extend([10, 10, 3, 2, 0, 0x0b, 2, 0, 0x0b, 2, 0, 0x0b]);
        assert_eq!(check_shape(&wasm, &ShapeCaps::default()), Ok(()));
        let caps = ShapeCaps {
            max_functions: 2,
            ..ShapeCaps::default()
        };
        let e = check_shape(&wasm, &caps).unwrap_err();
        assert_eq!((e.name, e.value, e.cap), ("functions", 3, 2));
        assert!(e.to_string().contains("module cap `functions`"), "{e}");
    }
}
