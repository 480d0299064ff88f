//! Sprout's integration tests: one test binary, one module per area.

mod broker_conformance;
mod results_sqlite;
