//! End-to-end tests on real parts: the embedded broker, real InfluxDB and VictoriaMetrics
//! servers started on free ports in temp dirs, the real binaries as child processes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod automation;
mod buffer;
mod dashboard;
mod fleet;
mod gateway;
mod grafana;
mod harness;
mod hostile;
mod node_sim;
mod outage;
mod rules;
mod skeleton;
mod smtp;
mod sources;
