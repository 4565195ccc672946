//! TMP117 digital thermometer over I2C (Texas Instruments datasheet, register map).
//!
//! Registers are 16 bits, big-endian. The driver runs the device in continuous conversion: it
//! converts on its own schedule and the host reads the latest result whenever it likes.

use core::fmt;

use embedded_hal::i2c::I2c;

/// Bus address with ADD0 to GND.
pub const ADDRESS_GND: u8 = 0x48;
/// Bus address with ADD0 to V+.
pub const ADDRESS_VPLUS: u8 = 0x49;
/// Bus address with ADD0 to SDA.
pub const ADDRESS_SDA: u8 = 0x4A;
/// Bus address with ADD0 to SCL.
pub const ADDRESS_SCL: u8 = 0x4B;
/// What the low 12 bits of the DEVICE_ID register hold (the high 4 are the die revision).
pub const DEVICE_ID: u16 = 0x0117;
const DEVICE_ID_MASK: u16 = 0x0FFF;
/// 7.8125 m°C per LSB.
pub const CELSIUS_PER_LSB: f32 = 0.007_812_5;
/// TEMP_RESULT from power-on until the first conversion ends (−256 °C, outside the device's
/// −55…150 °C range, so never a real reading).
const POWER_ON_RESULT: i16 = i16::MIN;

mod reg {
    pub const TEMP_RESULT: u8 = 0x00;
    pub const CONFIGURATION: u8 = 0x01;
    pub const DEVICE_ID: u8 = 0x0F;
}

const MOD_CONTINUOUS: u16 = 0b00;

/// An error of the TMP117 driver, generic over the bus error `E`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error<E> {
    /// The I2C transfer failed.
    I2c(E),
    /// The device at the address is not a TMP117: its DEVICE_ID register holds `found`.
    WrongDeviceId { found: u16 },
    /// The first conversion since power-on has not finished yet (up to one conversion cycle).
    NotReady,
}

impl<E: fmt::Debug> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::I2c(e) => write!(f, "tmp117 i2c transfer failed: {e:?}"),
            Error::WrongDeviceId { found } => {
                write!(f, "device id {found:#06x} is not a tmp117 (expected {DEVICE_ID:#06x} in the low 12 bits)")
            }
            Error::NotReady => f.write_str("tmp117 has not finished its first conversion"),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for Error<E> {}

/// Conversions averaged into one result (AVG bits); more averages, less noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Averaging {
    None = 0b00,
    X8 = 0b01,
    X32 = 0b10,
    X64 = 0b11,
}

/// Time from one result to the next (CONV bits). The averaging sets a floor: 125 ms for
/// [`Averaging::X8`], 500 ms for `X32`, 1 s for `X64`; a shorter cycle runs at that floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ConversionCycle {
    Ms15_5 = 0b000,
    Ms125 = 0b001,
    Ms250 = 0b010,
    Ms500 = 0b011,
    S1 = 0b100,
    S4 = 0b101,
    S8 = 0b110,
    S16 = 0b111,
}

/// What [`Tmp117::init`] programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub averaging: Averaging,
    pub cycle: ConversionCycle,
}

impl Default for Config {
    /// The device's own power-on setting (8 averages, one result a second): a machine's
    /// temperature moves slowly, and self-heating stays negligible.
    fn default() -> Self {
        Self { averaging: Averaging::X8, cycle: ConversionCycle::S1 }
    }
}

impl Config {
    /// The CONFIGURATION register value: continuous conversion, alert pin left at its defaults.
    pub fn register(self) -> u16 {
        (MOD_CONTINUOUS << 10) | ((self.cycle as u16) << 7) | ((self.averaging as u16) << 5)
    }
}

/// The TMP117 driver.
pub struct Tmp117<I2C> {
    i2c: I2C,
    address: u8,
}

impl<I2C: I2c> Tmp117<I2C> {
    /// Takes the bus; talks to nothing until [`Tmp117::init`].
    pub fn new(i2c: I2C, address: u8) -> Self {
        Self { i2c, address }
    }

    /// Checks the device id, then starts continuous conversion.
    ///
    /// # Errors
    /// [`Error::WrongDeviceId`] when another device answers at the address (nothing is written to
    /// it then), [`Error::I2c`] when a transfer fails.
    pub fn init(&mut self, config: Config) -> Result<(), Error<I2C::Error>> {
        let found = self.device_id()?;
        if found & DEVICE_ID_MASK != DEVICE_ID {
            return Err(Error::WrongDeviceId { found });
        }
        // A plain register write: it does not reach the EEPROM (that needs EEPROM_UL unlocked),
        // so the device powers up with its stored defaults again.
        let [hi, lo] = config.register().to_be_bytes();
        self.i2c.write(self.address, &[reg::CONFIGURATION, hi, lo]).map_err(Error::I2c)
    }

    /// Reads the DEVICE_ID register, revision bits included.
    pub fn device_id(&mut self) -> Result<u16, Error<I2C::Error>> {
        self.read_register(reg::DEVICE_ID)
    }

    /// Reads the latest result in LSB (7.8125 m°C each).
    ///
    /// # Errors
    /// [`Error::NotReady`] before the first conversion since power-on ends, [`Error::I2c`] when
    /// the transfer fails.
    pub fn read_raw(&mut self) -> Result<i16, Error<I2C::Error>> {
        let [hi, lo] = self.read_register(reg::TEMP_RESULT)?.to_be_bytes();
        match i16::from_be_bytes([hi, lo]) {
            POWER_ON_RESULT => Err(Error::NotReady),
            raw => Ok(raw),
        }
    }

    /// Reads the latest result in °C; errors as [`Tmp117::read_raw`].
    pub fn read_celsius(&mut self) -> Result<f32, Error<I2C::Error>> {
        Ok(f32::from(self.read_raw()?) * CELSIUS_PER_LSB)
    }

    /// Gives the bus back.
    pub fn release(self) -> I2C {
        self.i2c
    }

    fn read_register(&mut self, register: u8) -> Result<u16, Error<I2C::Error>> {
        let mut value = [0u8; 2];
        self.i2c.write_read(self.address, &[register], &mut value).map_err(Error::I2c)?;
        Ok(u16::from_be_bytes(value))
    }
}

#[cfg(test)]
mod tests {
    use embedded_hal::i2c::ErrorKind;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction};

    use super::*;

    const ADDR: u8 = ADDRESS_GND;

    fn driver(expectations: &[Transaction]) -> Tmp117<Mock> {
        Tmp117::new(Mock::new(expectations), ADDR)
    }

    fn temp_result(bytes: [u8; 2]) -> Transaction {
        Transaction::write_read(ADDR, vec![0x00], bytes.to_vec())
    }

    #[test]
    fn init_checks_the_id_then_starts_continuous_conversion() {
        let mut dev = driver(&[
            Transaction::write_read(ADDR, vec![0x0F], vec![0x01, 0x17]),
            Transaction::write(ADDR, vec![0x01, 0x02, 0x20]),
        ]);
        assert_eq!(dev.init(Config::default()), Ok(()));
        dev.release().done();
    }

    #[test]
    fn init_accepts_any_die_revision_and_writes_the_chosen_timing() {
        let mut dev = driver(&[
            Transaction::write_read(ADDR, vec![0x0F], vec![0x11, 0x17]),
            Transaction::write(ADDR, vec![0x01, 0x00, 0xE0]),
        ]);
        assert_eq!(dev.init(Config { averaging: Averaging::X64, cycle: ConversionCycle::Ms125 }), Ok(()));
        dev.release().done();
    }

    #[test]
    fn init_refuses_another_device_without_writing_to_it() {
        let mut dev = driver(&[Transaction::write_read(ADDR, vec![0x0F], vec![0x01, 0x90])]);
        assert_eq!(dev.init(Config::default()), Err(Error::WrongDeviceId { found: 0x0190 }));
        dev.release().done();
    }

    #[test]
    fn init_reports_a_bus_error() {
        let mut dev = driver(&[
            Transaction::write_read(ADDR, vec![0x0F], vec![0x01, 0x17]),
            Transaction::write(ADDR, vec![0x01, 0x02, 0x20]).with_error(ErrorKind::Other),
        ]);
        assert_eq!(dev.init(Config::default()), Err(Error::I2c(ErrorKind::Other)));
        dev.release().done();

        let mut dev = driver(&[Transaction::write_read(ADDR, vec![0x0F], vec![0, 0]).with_error(ErrorKind::Other)]);
        assert_eq!(dev.init(Config::default()), Err(Error::I2c(ErrorKind::Other)));
        dev.release().done();
    }

    #[test]
    fn reads_the_result_big_endian_at_7_8125_millidegrees() {
        let mut dev = driver(&[temp_result([0x0C, 0x80]), temp_result([0xFF, 0x80]), temp_result([0x0C, 0x81])]);
        assert_eq!(dev.read_celsius(), Ok(25.0));
        assert_eq!(dev.read_celsius(), Ok(-1.0));
        assert_eq!(dev.read_raw(), Ok(3201));
        dev.release().done();
    }

    #[test]
    fn the_power_on_value_is_not_a_reading() {
        let mut dev = driver(&[temp_result([0x80, 0x00])]);
        assert_eq!(dev.read_celsius(), Err(Error::NotReady));
        dev.release().done();
    }

    #[test]
    fn a_bus_error_on_read_is_reported() {
        let mut dev = driver(&[temp_result([0, 0]).with_error(ErrorKind::Other)]);
        assert_eq!(dev.read_celsius(), Err(Error::I2c(ErrorKind::Other)));
        dev.release().done();
    }
}
