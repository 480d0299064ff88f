//! Sprout's integration tests: one test binary, one module per area.

mod adversarial;
mod backend_conformance;
mod broker_conformance;
mod cache;
mod celery_fixtures;
mod celery_redis;
mod cli;
mod concurrency;
mod deploy;
mod edges;
mod fuzz;
mod http;
mod layers;
mod liveness;
mod loading;
mod outcomes;
mod plugins;
mod poison;
mod prefork;
mod redis_backend;
mod redis_broker;
mod results_sqlite;
mod settle;
mod sqlite_broker;
mod support;
mod worker;
