//! Sprout's integration tests: one test binary, one module per area.

mod broker_conformance;
mod celery_fixtures;
mod results_sqlite;
