//! sluice: *when and where* tasks run. DAG files become validated task graphs ([`dag`]),
//! schedules give data intervals ([`schedule`]), one state machine governs task instances
//! ([`state`]), the metadata store records everything ([`store`]), the executor runs tries
//! ([`executor`]) and the CLI ([`cli`]) puts it in people's hands. *What* a task does lives
//! in the `sluice-operators` crate.

pub mod cli;
pub mod dag;
pub mod executor;
pub mod runs;
pub mod schedule;
pub mod scheduler;
pub mod settings;
pub mod state;
pub mod store;
pub mod web;

pub use sluice_operators as operators;
