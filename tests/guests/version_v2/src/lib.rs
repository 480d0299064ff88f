//! Version 2 of the `version` task (hot-reload tests replace version 1 by it).
const VERSION: &str = "v2";
include!("../../version.rs");
