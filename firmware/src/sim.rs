//! Simulated hardware for the host build of the node (the `node-sim` binary) and for tests.
//!
//! A [`Machine`] that heats up while it runs and cools down while stopped, the [`SimAdxl345`]
//! and [`SimTmp117`] that sense it, modelled at register level behind the embedded-hal 1.0 I2C
//! trait (the real drivers talk to them unchanged), and the [`SimRelay`] that the interlock
//! drives: energised, the machine runs.
//!
//! Time is what the caller last passed to [`Machine::advance_to`]: the simulator passes the
//! wall clock, tests pass whatever they like. Single-threaded, no heap.

use core::cell::Cell;
use core::convert::Infallible;

use embedded_hal::digital::{ErrorType as PinErrorType, OutputPin};
use embedded_hal::i2c::{ErrorKind, ErrorType, I2c, NoAcknowledgeSource, Operation};

use crate::drivers::{adxl345, tmp117};
use crate::interlock::Sensor;

/// How the machine behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MachineConfig {
    /// The temperature of a cold machine, and where it starts.
    pub ambient_c: f32,
    /// °C per second the temperature climbs while the machine runs, and falls (down to ambient)
    /// while it is stopped.
    pub ramp_c_per_s: f32,
    /// Amplitude of the vibration on the X axis while the machine runs, in g.
    pub vibration_g: f32,
    /// Frequency of that vibration.
    pub vibration_hz: f32,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self { ambient_c: 25.0, ramp_c_per_s: 0.0, vibration_g: 0.2, vibration_hz: 50.0 }
    }
}

/// The simulated machine and its clock.
pub struct Machine {
    config: MachineConfig,
    now_us: Cell<u64>,
    celsius: Cell<f32>,
    running: Cell<bool>,
    accelerometer_fault: Cell<bool>,
    thermometer_fault: Cell<bool>,
}

impl Machine {
    /// A stopped machine at ambient temperature, at time 0.
    pub fn new(config: MachineConfig) -> Self {
        Self {
            config,
            now_us: Cell::new(0),
            celsius: Cell::new(config.ambient_c),
            running: Cell::new(false),
            accelerometer_fault: Cell::new(false),
            thermometer_fault: Cell::new(false),
        }
    }

    /// Moves time forward to `now_us` (never backwards), heating or cooling the machine.
    pub fn advance_to(&self, now_us: u64) {
        let last = self.now_us.get();
        if now_us <= last {
            return;
        }
        let seconds = (now_us - last) as f32 / 1e6;
        let delta = self.config.ramp_c_per_s * seconds;
        let t = self.celsius.get();
        self.celsius.set(if self.running.get() { t + delta } else { (t - delta).max(self.config.ambient_c.min(t)) });
        self.now_us.set(now_us);
    }

    pub fn now_us(&self) -> u64 {
        self.now_us.get()
    }

    pub fn temperature_c(&self) -> f32 {
        self.celsius.get()
    }

    /// Sets the temperature outright (it goes on climbing or cooling from there).
    pub fn set_temperature_c(&self, celsius: f32) {
        self.celsius.set(celsius);
    }

    /// Whether the machine runs: its enable relay is energised.
    pub fn is_running(&self) -> bool {
        self.running.get()
    }

    /// Makes the sensor's bus transfers fail (the device stops acknowledging) or work again.
    pub fn set_bus_fault(&self, sensor: Sensor, failing: bool) {
        match sensor {
            Sensor::Accelerometer => self.accelerometer_fault.set(failing),
            Sensor::Thermometer => self.thermometer_fault.set(failing),
        }
    }

    fn bus_fault(&self, sensor: Sensor) -> bool {
        match sensor {
            Sensor::Accelerometer => self.accelerometer_fault.get(),
            Sensor::Thermometer => self.thermometer_fault.get(),
        }
    }

    /// X, Y, Z in g at `t_us`: the vibration on X while running, gravity on Z.
    fn acceleration_g(&self, t_us: u64) -> [f32; 3] {
        let x = if self.running.get() {
            let phase = core::f64::consts::TAU * f64::from(self.config.vibration_hz) * t_us as f64 / 1e6;
            self.config.vibration_g * libm::sin(phase % core::f64::consts::TAU) as f32
        } else {
            0.0
        };
        [x, 0.0, 1.0]
    }
}

/// The machine's enable relay, as an output pin: high energises it and the machine runs.
pub struct SimRelay<'a> {
    machine: &'a Machine,
}

impl<'a> SimRelay<'a> {
    pub fn new(machine: &'a Machine) -> Self {
        Self { machine }
    }
}

impl PinErrorType for SimRelay<'_> {
    type Error = Infallible;
}

impl OutputPin for SimRelay<'_> {
    fn set_low(&mut self) -> Result<(), Infallible> {
        self.machine.running.set(false);
        Ok(())
    }

    fn set_high(&mut self) -> Result<(), Infallible> {
        self.machine.running.set(true);
        Ok(())
    }
}

/// Register-level I2C device behaviour shared by the two models.
trait Registers {
    const SENSOR: Sensor;
    fn address(&self) -> u8;
    fn machine(&self) -> &Machine;
    /// The master wrote `bytes` (register pointer first).
    fn write(&mut self, bytes: &[u8]);
    /// The master reads `out` from the current register pointer.
    fn read(&mut self, out: &mut [u8]);
}

fn transaction<D: Registers>(dev: &mut D, address: u8, operations: &mut [Operation<'_>]) -> Result<(), ErrorKind> {
    if address != dev.address() {
        return Err(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address));
    }
    if dev.machine().bus_fault(D::SENSOR) {
        return Err(ErrorKind::Bus);
    }
    for op in operations {
        match op {
            Operation::Write(bytes) => dev.write(bytes),
            Operation::Read(out) => dev.read(out),
        }
    }
    Ok(())
}

/// An ADXL345 with its FIFO in stream mode: the samples a real one would have taken since the
/// measurement started, the oldest overwritten when the FIFO is not read in time.
pub struct SimAdxl345<'a> {
    machine: &'a Machine,
    address: u8,
    pointer: u8,
    power_ctl: u8,
    data_format: u8,
    bw_rate: u8,
    fifo_ctl: u8,
    /// When measuring started, and the index of the next sample to hand out.
    measuring_since_us: Option<u64>,
    next_sample: u64,
    /// Samples lost to FIFO overflow.
    pub overflowed: u64,
}

impl<'a> SimAdxl345<'a> {
    pub fn new(machine: &'a Machine, address: u8) -> Self {
        Self {
            machine,
            address,
            pointer: 0,
            power_ctl: 0,
            data_format: 0,
            bw_rate: 0x0A,
            fifo_ctl: 0,
            measuring_since_us: None,
            next_sample: 0,
            overflowed: 0,
        }
    }

    fn rate_hz(&self) -> u64 {
        // Codes 0x06..=0x0F double from 6.25 Hz to 3200 Hz; slower ones are not modelled.
        3200 >> (0x0F - (self.bw_rate & 0x0F).max(0x06))
    }

    /// Samples taken so far since measuring started.
    fn taken(&self) -> u64 {
        match self.measuring_since_us {
            Some(since) => self.machine.now_us().saturating_sub(since) * self.rate_hz() / 1_000_000,
            None => 0,
        }
    }

    /// Entries in the FIFO (dropping what overflowed).
    fn entries(&mut self) -> u64 {
        let taken = self.taken();
        let oldest_kept = taken.saturating_sub(adxl345::FIFO_DEPTH as u64);
        if self.next_sample < oldest_kept {
            self.overflowed += oldest_kept - self.next_sample;
            self.next_sample = oldest_kept;
        }
        taken - self.next_sample
    }

    fn pop_sample(&mut self) -> [u8; 6] {
        if self.entries() == 0 {
            // A real one keeps the last sample in the data registers; zeros do here.
            return [0; 6];
        }
        let t_us = self.measuring_since_us.unwrap_or(0) + self.next_sample * 1_000_000 / self.rate_hz();
        self.next_sample += 1;
        let mut out = [0u8; 6];
        for (chunk, g) in out.chunks_exact_mut(2).zip(self.machine.acceleration_g(t_us)) {
            // Full resolution: 3.9 mg/LSB over ±16 g fits 13 bits.
            let lsb = libm::roundf(g / adxl345::G_PER_LSB).clamp(-4096.0, 4095.0) as i16;
            chunk.copy_from_slice(&lsb.to_le_bytes());
        }
        out
    }
}

impl Registers for SimAdxl345<'_> {
    const SENSOR: Sensor = Sensor::Accelerometer;

    fn address(&self) -> u8 {
        self.address
    }

    fn machine(&self) -> &Machine {
        self.machine
    }

    fn write(&mut self, bytes: &[u8]) {
        let Some((&register, values)) = bytes.split_first() else { return };
        self.pointer = register;
        for (offset, &value) in values.iter().enumerate() {
            match register.wrapping_add(offset as u8) {
                0x2C => self.bw_rate = value,
                0x2D => {
                    let measuring = value & 0x08 != 0;
                    match (measuring, self.measuring_since_us) {
                        (true, None) => {
                            self.measuring_since_us = Some(self.machine.now_us());
                            self.next_sample = 0;
                        }
                        (false, _) => self.measuring_since_us = None,
                        (true, Some(_)) => {}
                    }
                    self.power_ctl = value;
                }
                0x31 => self.data_format = value,
                0x38 => self.fifo_ctl = value,
                _ => {}
            }
        }
    }

    fn read(&mut self, out: &mut [u8]) {
        match self.pointer {
            0x32 => {
                let sample = self.pop_sample();
                for (o, b) in out.iter_mut().zip(sample) {
                    *o = b;
                }
            }
            register => {
                for (offset, o) in out.iter_mut().enumerate() {
                    *o = match register.wrapping_add(offset as u8) {
                        0x00 => adxl345::DEVICE_ID,
                        0x2C => self.bw_rate,
                        0x2D => self.power_ctl,
                        0x31 => self.data_format,
                        0x38 => self.fifo_ctl,
                        0x39 => self.entries().min(adxl345::FIFO_DEPTH as u64) as u8,
                        _ => 0,
                    };
                }
            }
        }
    }
}

impl ErrorType for SimAdxl345<'_> {
    type Error = ErrorKind;
}

impl I2c for SimAdxl345<'_> {
    fn transaction(&mut self, address: u8, operations: &mut [Operation<'_>]) -> Result<(), ErrorKind> {
        transaction(self, address, operations)
    }
}

/// A TMP117 converting continuously: every read gives the machine's temperature now.
pub struct SimTmp117<'a> {
    machine: &'a Machine,
    address: u8,
    pointer: u8,
    configuration: u16,
}

impl<'a> SimTmp117<'a> {
    pub fn new(machine: &'a Machine, address: u8) -> Self {
        // The power-on configuration: continuous conversion, 1 s cycle, 8 averages.
        Self { machine, address, pointer: 0, configuration: 0x0220 }
    }

    fn register(&self, register: u8) -> u16 {
        match register {
            0x00 => {
                let lsb = libm::roundf(self.machine.temperature_c() / tmp117::CELSIUS_PER_LSB);
                // The result register's range is -256..+256 °C; -32768 means "no result yet".
                lsb.clamp(-32767.0, 32767.0) as i16 as u16
            }
            0x01 => self.configuration,
            0x0F => tmp117::DEVICE_ID,
            _ => 0,
        }
    }
}

impl Registers for SimTmp117<'_> {
    const SENSOR: Sensor = Sensor::Thermometer;

    fn address(&self) -> u8 {
        self.address
    }

    fn machine(&self) -> &Machine {
        self.machine
    }

    fn write(&mut self, bytes: &[u8]) {
        let Some((&register, values)) = bytes.split_first() else { return };
        self.pointer = register;
        if let (0x01, [hi, lo]) = (register, values) {
            self.configuration = u16::from_be_bytes([*hi, *lo]);
        }
    }

    fn read(&mut self, out: &mut [u8]) {
        // 16-bit registers, most significant byte first; no auto-increment.
        let value = self.register(self.pointer).to_be_bytes();
        for (o, b) in out.iter_mut().zip(value.into_iter().cycle()) {
            *o = b;
        }
    }
}

impl ErrorType for SimTmp117<'_> {
    type Error = ErrorKind;
}

impl I2c for SimTmp117<'_> {
    fn transaction(&mut self, address: u8, operations: &mut [Operation<'_>]) -> Result<(), ErrorKind> {
        transaction(self, address, operations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::adxl345::{Acceleration, Adxl345};
    use crate::drivers::tmp117::Tmp117;

    fn machine(ramp_c_per_s: f32) -> Machine {
        Machine::new(MachineConfig { ramp_c_per_s, vibration_g: 0.5, ..MachineConfig::default() })
    }

    #[test]
    fn the_real_thermometer_driver_reads_the_machine() {
        let m = machine(0.0);
        let mut tmp = Tmp117::new(SimTmp117::new(&m, tmp117::ADDRESS_GND), tmp117::ADDRESS_GND);
        tmp.init(tmp117::Config::default()).unwrap();
        assert_eq!(tmp.read_celsius(), Ok(25.0));
        m.set_temperature_c(-40.5);
        assert_eq!(tmp.read_celsius(), Ok(-40.5));
        m.set_bus_fault(Sensor::Thermometer, true);
        assert_eq!(tmp.read_celsius(), Err(tmp117::Error::I2c(ErrorKind::Bus)));
        let mut wrong = Tmp117::new(SimTmp117::new(&m, tmp117::ADDRESS_GND), tmp117::ADDRESS_VPLUS);
        assert!(matches!(wrong.init(tmp117::Config::default()), Err(tmp117::Error::I2c(ErrorKind::NoAcknowledge(_)))));
    }

    #[test]
    fn the_machine_heats_while_running_and_cools_to_ambient_when_stopped() {
        let m = machine(10.0);
        let mut relay = SimRelay::new(&m);
        m.advance_to(1_000_000);
        assert_eq!(m.temperature_c(), 25.0, "a stopped machine stays at ambient");
        relay.set_high().unwrap();
        m.advance_to(3_000_000);
        assert_eq!(m.temperature_c(), 45.0);
        relay.set_low().unwrap();
        m.advance_to(4_000_000);
        assert_eq!(m.temperature_c(), 35.0);
        m.advance_to(9_000_000);
        assert_eq!(m.temperature_c(), 25.0);
    }

    #[test]
    fn the_real_accelerometer_driver_reads_the_fifo_at_the_configured_rate() {
        let m = machine(0.0);
        SimRelay::new(&m).set_high().unwrap();
        let mut adxl = Adxl345::new(SimAdxl345::new(&m, adxl345::ADDRESS_ALT_LOW), adxl345::ADDRESS_ALT_LOW);
        adxl.init(adxl345::Config::default()).unwrap();
        let mut out = [Acceleration::default(); adxl345::FIFO_DEPTH];
        assert_eq!(adxl.read_fifo_g(&mut out), Ok(0));
        m.advance_to(5_000); // 16 samples at 3200 Hz
        assert_eq!(adxl.read_fifo_g(&mut out), Ok(16));
        assert!(out[..16].iter().all(|a| a.y == 0.0 && (a.z - 0.9984).abs() < 1e-3), "{:?}", out[0]);
        let peak = out[..16].iter().map(|a| a.x.abs()).fold(0.0f32, f32::max);
        assert!((peak - 0.5).abs() < 0.01, "50 Hz at 0.5 g: {peak}");
        m.advance_to(1_000_000); // far more than the FIFO holds
        assert_eq!(adxl.read_fifo_g(&mut out), Ok(adxl345::FIFO_DEPTH));
        m.set_bus_fault(Sensor::Accelerometer, true);
        assert_eq!(adxl.read_fifo_g(&mut out), Err(adxl345::Error::I2c(ErrorKind::Bus)));
    }
}
