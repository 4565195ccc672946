//! What the sensor-node firmware, the gateway agent and the cloud collector must agree on.
//!
//! `no_std` by default so the firmware compiles the very same frame code as the agent; the `alloc`
//! feature adds the heap-backed uplink types and `std` adds `std::error::Error` impls.
//!
//! # Layout
//! - `atomic_file` (`std`): crash-safe replacement of state files (temp file, fsync, rename, dir fsync).
//! - [`backoff`]: jittered exponential retry delays (reconnects, database retries).
//! - `broker` (feature `broker`): the embedded rumqttd MQTT broker.
//! - `clock` (`std`): the one wall clock, nanoseconds since the Unix epoch.
//! - `command` (feature `sign`): Ed25519 signing keys, signed commands and their verification.
//! - `config` (feature `config`): strict TOML parsing and every-problem validation for config files.
//! - `http` (feature `http`): the tiny HTTP server for `/metrics`, and the Prometheus text format.
//! - [`id`]: validation of agent and sensor identifiers (they become MQTT topic levels and InfluxDB tags).
//! - [`frame`]: the serial frame a sensor node sends (COBS + version byte + postcard + CRC-32) and its
//!   incremental, never-panicking decoder.
//! - [`model`] (`alloc`): reading, event, command (signed, and its result) and ack.
//! - [`batch`] (`alloc`): the uplink batch an agent sends to the collector, and its versioned wire format.
//! - [`codec`] (`alloc`): compact columnar encoding of one sensor's points (predicted, bit-packed).
//! - `secret` (`std`): credentials that redact themselves in `Debug`.
//! - [`units`]: human-readable durations and sizes for config files (`"250ms"`, `"64MiB"`).
//! - [`topic`]: the versioned MQTT topic scheme `edgeloop/v1/{agent}/{channel}`.
#![cfg_attr(not(any(feature = "std", test)), no_std)]

#[cfg(feature = "alloc")]
extern crate alloc;

#[cfg(feature = "std")]
pub mod atomic_file;
pub mod backoff;
#[cfg(feature = "broker")]
pub mod broker;
#[cfg(feature = "std")]
pub mod clock;
#[cfg(feature = "sign")]
pub mod command;
#[cfg(feature = "config")]
pub mod config;
pub mod frame;
#[cfg(feature = "http")]
pub mod http;
pub mod id;
#[cfg(feature = "std")]
pub mod secret;
pub mod topic;
pub mod units;

#[cfg(feature = "alloc")]
pub mod batch;
#[cfg(feature = "alloc")]
pub mod codec;
#[cfg(feature = "alloc")]
pub mod model;
