//! Sensor drivers, generic over the embedded-hal 1.0 I2C trait so that any HAL's bus (or an
//! `embedded-hal-bus` share of one) and `embedded-hal-mock` in tests fit.
//!
//! Each driver's errors are an `Error<E>` generic over the bus error, and each driver hands its
//! bus back with `release`. A constructor never touches the bus: `init` does, so a failed
//! initialisation leaves the driver in hand to retry or to release.
//!
//! # Layout
//! - [`adxl345`]: 3-axis accelerometer, read through its FIFO.
//! - [`tmp117`]: ±0.1 °C digital thermometer.

pub mod adxl345;
pub mod tmp117;
