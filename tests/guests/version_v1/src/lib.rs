//! Version 1 of the `version` task (hot-reload tests replace it by version 2).
const VERSION: &str = "v1";
include!("../../version.rs");
