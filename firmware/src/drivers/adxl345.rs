//! ADXL345 3-axis accelerometer over I2C (Analog Devices datasheet, rev. E, register map).
//!
//! The device runs in full resolution (3.9 mg/LSB whatever the range) with its FIFO in stream
//! mode: it keeps the last 32 samples, so the host can read in batches instead of once per
//! sample. At 3200 Hz the FIFO fills in 10 ms; a host polling more slowly loses the oldest
//! samples.

use core::fmt;

use embedded_hal::i2c::I2c;

/// Bus address with the ALT ADDRESS pin low.
pub const ADDRESS_ALT_LOW: u8 = 0x53;
/// Bus address with the ALT ADDRESS pin high.
pub const ADDRESS_ALT_HIGH: u8 = 0x1D;
/// What the DEVID register of every ADXL345 holds.
pub const DEVICE_ID: u8 = 0xE5;
/// Entries the FIFO holds.
pub const FIFO_DEPTH: usize = 32;
/// Scale in full resolution, for every range (datasheet typical).
pub const G_PER_LSB: f32 = 0.0039;

mod reg {
    pub const DEVID: u8 = 0x00;
    pub const BW_RATE: u8 = 0x2C;
    pub const POWER_CTL: u8 = 0x2D;
    pub const DATA_FORMAT: u8 = 0x31;
    pub const DATAX0: u8 = 0x32;
    pub const FIFO_CTL: u8 = 0x38;
    pub const FIFO_STATUS: u8 = 0x39;
}

const POWER_CTL_STANDBY: u8 = 0x00;
const POWER_CTL_MEASURE: u8 = 0x08;
const DATA_FORMAT_FULL_RES: u8 = 0x08;
/// Stream mode; the watermark bits stay 0 because the host polls FIFO_STATUS instead of taking
/// the watermark interrupt.
const FIFO_CTL_STREAM: u8 = 0x80;
const FIFO_STATUS_ENTRIES: u8 = 0x3F;

/// An error of the ADXL345 driver, generic over the bus error `E`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error<E> {
    /// The I2C transfer failed.
    I2c(E),
    /// The device at the address is not an ADXL345: its DEVID register holds `found`.
    WrongDeviceId { found: u8 },
}

impl<E: fmt::Debug> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::I2c(e) => write!(f, "adxl345 i2c transfer failed: {e:?}"),
            Error::WrongDeviceId { found } => {
                write!(f, "device id {found:#04x} is not an adxl345 (expected {DEVICE_ID:#04x})")
            }
        }
    }
}

impl<E: fmt::Debug> core::error::Error for Error<E> {}

/// Measurement range. Full resolution keeps 3.9 mg/LSB in every range, so a wider range costs
/// no resolution, only headroom against saturation on shocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Range {
    G2 = 0b00,
    G4 = 0b01,
    G8 = 0b10,
    G16 = 0b11,
}

/// Output data rate (BW_RATE rate code; the bandwidth is half the rate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DataRate {
    Hz3200 = 0x0F,
    Hz1600 = 0x0E,
    Hz800 = 0x0D,
    Hz400 = 0x0C,
    Hz200 = 0x0B,
    Hz100 = 0x0A,
}

impl DataRate {
    /// Samples per second.
    pub fn hz(self) -> u32 {
        match self {
            DataRate::Hz3200 => 3200,
            DataRate::Hz1600 => 1600,
            DataRate::Hz800 => 800,
            DataRate::Hz400 => 400,
            DataRate::Hz200 => 200,
            DataRate::Hz100 => 100,
        }
    }
}

/// What [`Adxl345::init`] programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub range: Range,
    pub rate: DataRate,
}

impl Default for Config {
    /// ±16 g at the highest rate: machine vibration reaches into the kHz and shocks exceed 2 g.
    fn default() -> Self {
        Self { range: Range::G16, rate: DataRate::Hz3200 }
    }
}

/// One sample as the device reports it, in LSB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawSample {
    pub x: i16,
    pub y: i16,
    pub z: i16,
}

impl RawSample {
    /// The sample in g (full resolution).
    pub fn to_g(self) -> Acceleration {
        Acceleration {
            x: f32::from(self.x) * G_PER_LSB,
            y: f32::from(self.y) * G_PER_LSB,
            z: f32::from(self.z) * G_PER_LSB,
        }
    }
}

/// One sample in g.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Acceleration {
    pub x: f32,
    pub y: f32,
    pub z: f32,
}

/// The ADXL345 driver.
pub struct Adxl345<I2C> {
    i2c: I2C,
    address: u8,
}

impl<I2C: I2c> Adxl345<I2C> {
    /// Takes the bus; talks to nothing until [`Adxl345::init`].
    pub fn new(i2c: I2C, address: u8) -> Self {
        Self { i2c, address }
    }

    /// Checks the device id, then configures and starts measuring.
    ///
    /// # Errors
    /// [`Error::WrongDeviceId`] when another device answers at the address (nothing is written to
    /// it then), [`Error::I2c`] when a transfer fails.
    pub fn init(&mut self, config: Config) -> Result<(), Error<I2C::Error>> {
        let found = self.device_id()?;
        if found != DEVICE_ID {
            return Err(Error::WrongDeviceId { found });
        }
        // The datasheet asks for standby while the measurement settings change.
        self.write_register(reg::POWER_CTL, POWER_CTL_STANDBY)?;
        self.write_register(reg::DATA_FORMAT, DATA_FORMAT_FULL_RES | config.range as u8)?;
        self.write_register(reg::BW_RATE, config.rate as u8)?;
        self.write_register(reg::FIFO_CTL, FIFO_CTL_STREAM)?;
        self.write_register(reg::POWER_CTL, POWER_CTL_MEASURE)
    }

    /// Reads the DEVID register.
    pub fn device_id(&mut self) -> Result<u8, Error<I2C::Error>> {
        let mut id = [0u8];
        self.i2c.write_read(self.address, &[reg::DEVID], &mut id).map_err(Error::I2c)?;
        Ok(id[0])
    }

    /// Samples waiting in the FIFO.
    pub fn fifo_entries(&mut self) -> Result<usize, Error<I2C::Error>> {
        let mut status = [0u8];
        self.i2c.write_read(self.address, &[reg::FIFO_STATUS], &mut status).map_err(Error::I2c)?;
        Ok(usize::from(status[0] & FIFO_STATUS_ENTRIES))
    }

    /// Reads the oldest sample (and pops it from the FIFO).
    pub fn read_sample(&mut self) -> Result<RawSample, Error<I2C::Error>> {
        // One burst of all six data registers: the device pops a FIFO entry per read of the data
        // registers, so reading axes one by one would mix axes of different samples.
        let mut data = [0u8; 6];
        self.i2c.write_read(self.address, &[reg::DATAX0], &mut data).map_err(Error::I2c)?;
        Ok(RawSample {
            x: i16::from_le_bytes([data[0], data[1]]),
            y: i16::from_le_bytes([data[2], data[3]]),
            z: i16::from_le_bytes([data[4], data[5]]),
        })
    }

    /// Reads the samples waiting in the FIFO, oldest first, as many as fit `out`; returns how many
    /// were written. Samples that did not fit stay in the FIFO for the next call.
    ///
    /// # Errors
    /// [`Error::I2c`] when a transfer fails; the samples read before it are in `out` but lost to
    /// the caller, the rest stay in the FIFO.
    pub fn read_fifo(&mut self, out: &mut [RawSample]) -> Result<usize, Error<I2C::Error>> {
        let n = self.fifo_entries()?.min(out.len());
        for slot in out.iter_mut().take(n) {
            *slot = self.read_sample()?;
        }
        Ok(n)
    }

    /// [`Adxl345::read_fifo`], in g.
    pub fn read_fifo_g(&mut self, out: &mut [Acceleration]) -> Result<usize, Error<I2C::Error>> {
        let n = self.fifo_entries()?.min(out.len());
        for slot in out.iter_mut().take(n) {
            *slot = self.read_sample()?.to_g();
        }
        Ok(n)
    }

    /// Gives the bus back.
    pub fn release(self) -> I2C {
        self.i2c
    }

    fn write_register(&mut self, register: u8, value: u8) -> Result<(), Error<I2C::Error>> {
        self.i2c.write(self.address, &[register, value]).map_err(Error::I2c)
    }
}

#[cfg(test)]
mod tests {
    use embedded_hal::i2c::ErrorKind;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction};

    use super::*;

    const ADDR: u8 = ADDRESS_ALT_LOW;

    fn driver(expectations: &[Transaction]) -> Adxl345<Mock> {
        Adxl345::new(Mock::new(expectations), ADDR)
    }

    fn data(x: i16, y: i16, z: i16) -> Transaction {
        let mut bytes = Vec::new();
        for v in [x, y, z] {
            bytes.extend(v.to_le_bytes());
        }
        Transaction::write_read(ADDR, vec![0x32], bytes)
    }

    #[test]
    fn init_checks_the_id_then_configures_in_standby_and_starts_measuring() {
        let mut dev = driver(&[
            Transaction::write_read(ADDR, vec![0x00], vec![0xE5]),
            Transaction::write(ADDR, vec![0x2D, 0x00]),
            Transaction::write(ADDR, vec![0x31, 0x0B]),
            Transaction::write(ADDR, vec![0x2C, 0x0F]),
            Transaction::write(ADDR, vec![0x38, 0x80]),
            Transaction::write(ADDR, vec![0x2D, 0x08]),
        ]);
        assert_eq!(dev.init(Config::default()), Ok(()));
        dev.release().done();
    }

    #[test]
    fn init_writes_the_chosen_range_and_rate() {
        let mut dev = driver(&[
            Transaction::write_read(ADDR, vec![0x00], vec![0xE5]),
            Transaction::write(ADDR, vec![0x2D, 0x00]),
            Transaction::write(ADDR, vec![0x31, 0x09]),
            Transaction::write(ADDR, vec![0x2C, 0x0D]),
            Transaction::write(ADDR, vec![0x38, 0x80]),
            Transaction::write(ADDR, vec![0x2D, 0x08]),
        ]);
        assert_eq!(dev.init(Config { range: Range::G4, rate: DataRate::Hz800 }), Ok(()));
        dev.release().done();
    }

    #[test]
    fn init_refuses_another_device_without_writing_to_it() {
        let mut dev = driver(&[Transaction::write_read(ADDR, vec![0x00], vec![0x1E])]);
        assert_eq!(dev.init(Config::default()), Err(Error::WrongDeviceId { found: 0x1E }));
        dev.release().done();
    }

    #[test]
    fn init_reports_a_bus_error_and_stops() {
        let mut dev = driver(&[
            Transaction::write_read(ADDR, vec![0x00], vec![0xE5]),
            Transaction::write(ADDR, vec![0x2D, 0x00]).with_error(ErrorKind::Other),
        ]);
        assert_eq!(dev.init(Config::default()), Err(Error::I2c(ErrorKind::Other)));
        dev.release().done();

        let mut dev = driver(&[Transaction::write_read(ADDR, vec![0x00], vec![0]).with_error(ErrorKind::Other)]);
        assert_eq!(dev.init(Config::default()), Err(Error::I2c(ErrorKind::Other)));
        dev.release().done();
    }

    #[test]
    fn fifo_read_takes_the_entry_count_then_one_burst_per_entry() {
        // Bit 7 of FIFO_STATUS is the trigger flag, not part of the count.
        let mut dev =
            driver(&[Transaction::write_read(ADDR, vec![0x39], vec![0x82]), data(256, -256, 1), data(-1, 0, i16::MAX)]);
        let mut out = [RawSample::default(); FIFO_DEPTH];
        assert_eq!(dev.read_fifo(&mut out), Ok(2));
        assert_eq!(out[0], RawSample { x: 256, y: -256, z: 1 });
        assert_eq!(out[1], RawSample { x: -1, y: 0, z: i16::MAX });
        assert_eq!(out[2], RawSample::default());
        dev.release().done();
    }

    #[test]
    fn fifo_read_in_g_uses_the_full_resolution_scale() {
        let mut dev = driver(&[Transaction::write_read(ADDR, vec![0x39], vec![1]), data(256, -512, 0)]);
        let mut out = [Acceleration::default(); 4];
        assert_eq!(dev.read_fifo_g(&mut out), Ok(1));
        assert!((out[0].x - 0.9984).abs() < 1e-6, "{:?}", out[0]);
        assert!((out[0].y + 1.9968).abs() < 1e-6, "{:?}", out[0]);
        assert_eq!(out[0].z, 0.0);
        dev.release().done();
    }

    #[test]
    fn fifo_read_leaves_what_does_not_fit_and_reads_nothing_when_empty() {
        let mut dev = driver(&[
            Transaction::write_read(ADDR, vec![0x39], vec![20]),
            data(1, 2, 3),
            data(4, 5, 6),
            Transaction::write_read(ADDR, vec![0x39], vec![0]),
        ]);
        let mut out = [RawSample::default(); 2];
        assert_eq!(dev.read_fifo(&mut out), Ok(2));
        assert_eq!(out[1], RawSample { x: 4, y: 5, z: 6 });
        assert_eq!(dev.read_fifo(&mut out), Ok(0));
        dev.release().done();
    }

    #[test]
    fn fifo_read_reports_a_bus_error_on_status_or_data() {
        let mut dev = driver(&[Transaction::write_read(ADDR, vec![0x39], vec![0]).with_error(ErrorKind::Other)]);
        let mut out = [RawSample::default(); 4];
        assert_eq!(dev.read_fifo(&mut out), Err(Error::I2c(ErrorKind::Other)));
        dev.release().done();

        let mut dev = driver(&[
            Transaction::write_read(ADDR, vec![0x39], vec![3]),
            data(1, 2, 3),
            Transaction::write_read(ADDR, vec![0x32], vec![0; 6]).with_error(ErrorKind::Other),
        ]);
        let mut out = [Acceleration::default(); 4];
        assert_eq!(dev.read_fifo_g(&mut out), Err(Error::I2c(ErrorKind::Other)));
        dev.release().done();
    }

    #[test]
    fn errors_read_as_sentences() {
        let e: Error<ErrorKind> = Error::WrongDeviceId { found: 0x1E };
        assert_eq!(e.to_string(), "device id 0x1e is not an adxl345 (expected 0xe5)");
    }
}
