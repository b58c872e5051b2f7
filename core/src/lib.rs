//! sluice-core: *when and where* tasks run. DAG files become validated task graphs
//! ([`dag`]), schedules give data intervals ([`schedule`]), one state machine governs task
//! instances ([`state`]), the metadata store records everything ([`store`]), the scheduler
//! decides which runs start ([`scheduler`]), the executor runs their tries ([`executor`]),
//! [`runs`] and [`backfill`] start and re-run runs, [`trylog`] keeps each try's log, [`storage`] puts logs and artifacts where every machine reads them, and the
//! front ends — the web server ([`web`]) and the CLI ([`cli`]) — only translate requests
//! into calls of these.
//!
//! *What* a task does lives behind the operator API (`sluice-operator-api`); the program
//! that links this crate builds one [`Registry`](sluice_operator_api::Registry) of operators
//! and hands it in. This crate never depends on a particular operator, nor on Polars.

pub mod backfill;
pub mod cli;
pub mod dag;
pub mod executor;
pub mod metrics;
pub mod notify;
pub mod retention;
pub mod runs;
pub mod schedule;
pub mod scheduler;
pub mod settings;
pub mod state;
pub mod storage;
pub mod store;
pub mod trylog;
pub mod web;

pub use sluice_operator_api as operator_api;
