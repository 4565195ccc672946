//! The fail-safe interlock: the output that drives the machine's enable relay.
//!
//! Energised (pin high) lets the machine run, de-energised (pin low) stops it, so a node that
//! loses power, hangs in reset or has a cut wire stops the machine too. The interlock trips
//! (de-energises) and **latches** on a temperature or vibration over its limit, on a sensor fault,
//! on a command from the gateway, and — when configured — on silence from the gateway. It also
//! starts latched ([`InterlockCause::PowerOn`]): a machine never restarts by itself when power
//! returns.
//!
//! Only [`Interlock::reset`], on the gateway's command, releases the latch, and it refuses while
//! any cause is still present: a reading over its limit, a failing sensor, a sensor with no
//! reading yet, a silent gateway. The latch keeps the *first* cause (first-out), the one that
//! explains the stop; later causes do not overwrite it.
//!
//! Time is whatever monotonic milliseconds the caller passes in. Every call that can change the
//! relay drives the pin, and a failed pin write is returned, never panicked on, and retried by the
//! next call (including [`Interlock::poll`]) until the pin takes it.

use core::fmt;

pub use edgeloop_shared::frame::{InterlockCause, Sensor};
use embedded_hal::digital::OutputPin;

/// The local trip limits. Only [`Limits::new`] makes one, so a limit is never NaN: a NaN limit
/// compares false with every reading and would never trip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    temperature_c: f32,
    vibration_rms_g: f32,
}

/// Limits refused by [`Limits::new`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InvalidLimits {
    pub temperature_c: f32,
    pub vibration_rms_g: f32,
}

impl fmt::Display for InvalidLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "limits of {} °C and {} g rms refused: the temperature must be finite, the vibration finite and above 0",
            self.temperature_c, self.vibration_rms_g
        )
    }
}

impl core::error::Error for InvalidLimits {}

impl Limits {
    /// # Errors
    /// [`InvalidLimits`] when the temperature is not finite or the vibration is not finite and
    /// above 0 (a vibration limit of 0 or less would trip on the sensor's own noise).
    pub const fn new(temperature_c: f32, vibration_rms_g: f32) -> Result<Self, InvalidLimits> {
        if temperature_c.is_finite() && vibration_rms_g.is_finite() && vibration_rms_g > 0.0 {
            Ok(Self { temperature_c, vibration_rms_g })
        } else {
            Err(InvalidLimits { temperature_c, vibration_rms_g })
        }
    }

    pub fn temperature_c(&self) -> f32 {
        self.temperature_c
    }

    pub fn vibration_rms_g(&self) -> f32 {
        self.vibration_rms_g
    }
}

/// How the interlock decides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    pub limits: Limits,
    /// Trip when nothing came from the gateway for longer than this; `None` turns the check off
    /// (for a node that must keep its machine running through gateway maintenance).
    pub heartbeat_timeout_ms: Option<u64>,
}

/// An error of the interlock, generic over the pin's error `E`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error<E> {
    /// Driving the relay pin failed; the interlock tries again on the next call.
    Pin(E),
}

impl<E: fmt::Debug> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Pin(e) => write!(f, "cannot drive the enable relay pin: {e:?}"),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for Error<E> {}

/// What [`Interlock::reset`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ResetOutcome {
    /// The latch was released and the relay energised.
    Released,
    /// The latch holds: this cause is still present.
    Refused(InterlockCause),
    /// Nothing was latched.
    NotLatched,
}

/// The last thing heard from one sensor.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Health {
    NoReading,
    Fault,
    Value(f32),
}

/// The interlock, owning the relay's output pin.
pub struct Interlock<P> {
    pin: P,
    config: Config,
    latched: Option<InterlockCause>,
    /// A trip not yet taken by [`Interlock::take_new_trip`].
    unreported: Option<InterlockCause>,
    /// Whether the pin was last driven high, `None` until a write succeeds after a failed one.
    energised: Option<bool>,
    temperature: Health,
    vibration: Health,
    gateway_seen_ms: u64,
}

impl<P: OutputPin> Interlock<P> {
    /// Takes the pin, latched with [`InterlockCause::PowerOn`]. The pin is first driven (low) by
    /// the first call that takes the time, such as [`Interlock::poll`]: the board configures the
    /// GPIO low from the start.
    pub fn new(pin: P, config: Config) -> Self {
        Self {
            pin,
            config,
            latched: Some(InterlockCause::PowerOn),
            unreported: None,
            energised: None,
            temperature: Health::NoReading,
            vibration: Health::NoReading,
            gateway_seen_ms: 0,
        }
    }

    /// Whether the machine is stopped by the latch.
    pub fn is_tripped(&self) -> bool {
        self.latched.is_some()
    }

    /// The first cause of the current trip.
    pub fn cause(&self) -> Option<InterlockCause> {
        self.latched
    }

    /// The cause of a trip that happened since the last call, once.
    pub fn take_new_trip(&mut self) -> Option<InterlockCause> {
        self.unreported.take()
    }

    pub fn limits(&self) -> Limits {
        self.config.limits
    }

    /// Replaces the limits. They apply from the next reading on, and to any reset from now on.
    pub fn set_limits(&mut self, limits: Limits) {
        self.config.limits = limits;
    }

    /// A temperature reading. A non-finite one counts as a thermometer fault.
    pub fn temperature(&mut self, celsius: f32) -> Result<(), Error<P::Error>> {
        self.temperature = if celsius.is_finite() { Health::Value(celsius) } else { Health::Fault };
        self.evaluate()
    }

    /// The vibration RMS of a window, in g. A non-finite one counts as an accelerometer fault.
    pub fn vibration(&mut self, rms_g: f32) -> Result<(), Error<P::Error>> {
        self.vibration = if rms_g.is_finite() { Health::Value(rms_g) } else { Health::Fault };
        self.evaluate()
    }

    /// The sensor's driver failed. The fault stays present until the sensor's next good reading.
    pub fn sensor_fault(&mut self, sensor: Sensor) -> Result<(), Error<P::Error>> {
        match sensor {
            Sensor::Accelerometer => self.vibration = Health::Fault,
            Sensor::Thermometer => self.temperature = Health::Fault,
        }
        self.evaluate()
    }

    /// A valid frame arrived from the gateway at `now_ms`.
    pub fn gateway_seen(&mut self, now_ms: u64) {
        self.gateway_seen_ms = self.gateway_seen_ms.max(now_ms);
    }

    /// Checks the gateway's heartbeat and retries a failed pin write; call it every loop.
    pub fn poll(&mut self, now_ms: u64) -> Result<(), Error<P::Error>> {
        if let Some(silent_ms) = self.heartbeat_silence(now_ms) {
            self.latch(InterlockCause::HeartbeatLost { silent_ms });
        }
        self.drive()
    }

    /// Trips for `cause` (the gateway's command, typically).
    pub fn trip(&mut self, cause: InterlockCause) -> Result<(), Error<P::Error>> {
        self.latch(cause);
        self.drive()
    }

    /// The gateway's reset command, received at `now_ms`: releases the latch unless a cause is
    /// still present.
    ///
    /// # Errors
    /// [`Error::Pin`] when the relay could not be driven; after a release the latch stays
    /// released and the next call retries energising.
    pub fn reset(&mut self, now_ms: u64) -> Result<ResetOutcome, Error<P::Error>> {
        // The reset itself came from the gateway: it is alive.
        self.gateway_seen(now_ms);
        let outcome = if self.latched.is_none() {
            ResetOutcome::NotLatched
        } else if let Some(cause) = self.present_cause(now_ms) {
            ResetOutcome::Refused(cause)
        } else {
            self.latched = None;
            self.unreported = None;
            ResetOutcome::Released
        };
        self.drive()?;
        Ok(outcome)
    }

    /// A cause that is present right now, whether latched or not.
    pub fn present_cause(&self, now_ms: u64) -> Option<InterlockCause> {
        let limits = self.config.limits;
        let temperature = match self.temperature {
            Health::NoReading => Some(InterlockCause::NoReading { sensor: Sensor::Thermometer }),
            Health::Fault => Some(InterlockCause::SensorFault { sensor: Sensor::Thermometer }),
            Health::Value(celsius) if celsius > limits.temperature_c => {
                Some(InterlockCause::OverTemperature { celsius })
            }
            Health::Value(_) => None,
        };
        let vibration = match self.vibration {
            Health::NoReading => Some(InterlockCause::NoReading { sensor: Sensor::Accelerometer }),
            Health::Fault => Some(InterlockCause::SensorFault { sensor: Sensor::Accelerometer }),
            Health::Value(rms_g) if rms_g > limits.vibration_rms_g => Some(InterlockCause::OverVibration { rms_g }),
            Health::Value(_) => None,
        };
        temperature
            .or(vibration)
            .or_else(|| self.heartbeat_silence(now_ms).map(|silent_ms| InterlockCause::HeartbeatLost { silent_ms }))
    }

    /// Gives the pin back, as it was last driven.
    pub fn release(self) -> P {
        self.pin
    }

    fn heartbeat_silence(&self, now_ms: u64) -> Option<u64> {
        let timeout = self.config.heartbeat_timeout_ms?;
        let silent_ms = now_ms.saturating_sub(self.gateway_seen_ms);
        (silent_ms > timeout).then_some(silent_ms)
    }

    /// Trips on a reading that is over its limit or faulty. A sensor without a reading yet does
    /// not trip a running machine (it never ran without one: reset refuses), it only blocks reset.
    fn evaluate(&mut self) -> Result<(), Error<P::Error>> {
        let limits = self.config.limits;
        let cause = match (self.temperature, self.vibration) {
            (Health::Fault, _) => Some(InterlockCause::SensorFault { sensor: Sensor::Thermometer }),
            (_, Health::Fault) => Some(InterlockCause::SensorFault { sensor: Sensor::Accelerometer }),
            (Health::Value(celsius), _) if celsius > limits.temperature_c => {
                Some(InterlockCause::OverTemperature { celsius })
            }
            (_, Health::Value(rms_g)) if rms_g > limits.vibration_rms_g => {
                Some(InterlockCause::OverVibration { rms_g })
            }
            _ => None,
        };
        if let Some(cause) = cause {
            self.latch(cause);
        }
        self.drive()
    }

    fn latch(&mut self, cause: InterlockCause) {
        if self.latched.is_none() {
            self.latched = Some(cause);
            self.unreported = Some(cause);
        }
    }

    fn drive(&mut self) -> Result<(), Error<P::Error>> {
        let energise = self.latched.is_none();
        if self.energised == Some(energise) {
            return Ok(());
        }
        let written = if energise { self.pin.set_high() } else { self.pin.set_low() };
        match written {
            Ok(()) => {
                self.energised = Some(energise);
                Ok(())
            }
            Err(e) => {
                self.energised = None;
                Err(Error::Pin(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;

    use embedded_hal_mock::eh1::{
        MockError,
        digital::{Mock, State, Transaction},
    };

    use super::*;

    fn config(heartbeat_timeout_ms: Option<u64>) -> Config {
        Config { limits: Limits::new(80.0, 2.0).unwrap(), heartbeat_timeout_ms }
    }

    fn low() -> Transaction {
        Transaction::set(State::Low)
    }

    fn high() -> Transaction {
        Transaction::set(State::High)
    }

    /// An interlock past power-on: good readings, reset, relay energised.
    fn running(expect_after_start: &[Transaction], heartbeat_timeout_ms: Option<u64>) -> Interlock<Mock> {
        let mut expectations = vec![low(), high()];
        expectations.extend_from_slice(expect_after_start);
        let mut lock = Interlock::new(Mock::new(&expectations), config(heartbeat_timeout_ms));
        lock.poll(0).unwrap();
        lock.temperature(25.0).unwrap();
        lock.vibration(0.1).unwrap();
        assert_eq!(lock.reset(10), Ok(ResetOutcome::Released));
        assert_eq!(lock.take_new_trip(), None);
        lock
    }

    #[test]
    fn starts_latched_and_refuses_reset_until_both_sensors_have_read() {
        let mut lock = Interlock::new(Mock::new(&[low(), high()]), config(None));
        assert_eq!(lock.poll(0), Ok(()));
        assert_eq!(lock.cause(), Some(InterlockCause::PowerOn));
        assert_eq!(lock.reset(1), Ok(ResetOutcome::Refused(InterlockCause::NoReading { sensor: Sensor::Thermometer })));
        lock.temperature(25.0).unwrap();
        assert_eq!(
            lock.reset(2),
            Ok(ResetOutcome::Refused(InterlockCause::NoReading { sensor: Sensor::Accelerometer }))
        );
        lock.vibration(0.3).unwrap();
        assert!(lock.is_tripped());
        assert_eq!(lock.reset(3), Ok(ResetOutcome::Released));
        assert!(!lock.is_tripped());
        assert_eq!(lock.reset(4), Ok(ResetOutcome::NotLatched));
        lock.release().done();
    }

    #[test]
    fn over_temperature_trips_latches_and_blocks_reset_while_hot() {
        let mut lock = running(&[low(), high()], None);
        lock.temperature(80.0).unwrap();
        assert!(!lock.is_tripped(), "at the limit is not over it");
        lock.temperature(80.5).unwrap();
        assert_eq!(lock.take_new_trip(), Some(InterlockCause::OverTemperature { celsius: 80.5 }));
        assert_eq!(lock.take_new_trip(), None, "a trip is reported once");
        lock.temperature(81.0).unwrap();
        assert_eq!(lock.reset(20), Ok(ResetOutcome::Refused(InterlockCause::OverTemperature { celsius: 81.0 })));
        lock.temperature(60.0).unwrap();
        assert!(lock.is_tripped(), "cooling down does not restart the machine");
        assert_eq!(lock.reset(30), Ok(ResetOutcome::Released));
        lock.release().done();
    }

    #[test]
    fn the_first_cause_is_kept() {
        let mut lock = running(&[low()], None);
        lock.vibration(2.5).unwrap();
        lock.temperature(95.0).unwrap();
        lock.sensor_fault(Sensor::Thermometer).unwrap();
        assert_eq!(lock.cause(), Some(InterlockCause::OverVibration { rms_g: 2.5 }));
        assert_eq!(lock.take_new_trip(), Some(InterlockCause::OverVibration { rms_g: 2.5 }));
        lock.release().done();
    }

    #[test]
    fn a_sensor_fault_trips_and_blocks_reset_until_a_good_reading() {
        let mut lock = running(&[low(), high()], None);
        lock.sensor_fault(Sensor::Accelerometer).unwrap();
        assert_eq!(lock.cause(), Some(InterlockCause::SensorFault { sensor: Sensor::Accelerometer }));
        assert_eq!(
            lock.reset(20),
            Ok(ResetOutcome::Refused(InterlockCause::SensorFault { sensor: Sensor::Accelerometer }))
        );
        lock.vibration(0.2).unwrap();
        assert_eq!(lock.reset(21), Ok(ResetOutcome::Released));
        lock.release().done();
    }

    #[test]
    fn a_nan_reading_is_a_fault_not_a_pass() {
        let mut lock = running(&[low()], None);
        lock.temperature(f32::NAN).unwrap();
        assert_eq!(lock.cause(), Some(InterlockCause::SensorFault { sensor: Sensor::Thermometer }));
        lock.release().done();
    }

    #[test]
    fn gateway_silence_trips_when_configured() {
        let mut lock = running(&[low(), high()], Some(1_000));
        lock.gateway_seen(500);
        lock.poll(1_500).unwrap();
        assert!(!lock.is_tripped(), "silent for exactly the timeout is still fine");
        lock.poll(1_501).unwrap();
        assert_eq!(lock.cause(), Some(InterlockCause::HeartbeatLost { silent_ms: 1_001 }));
        // The reset command is itself a sign of life.
        assert_eq!(lock.reset(5_000), Ok(ResetOutcome::Released));
        lock.release().done();
    }

    #[test]
    fn gateway_silence_is_ignored_when_turned_off() {
        let mut lock = running(&[], None);
        lock.poll(u64::MAX).unwrap();
        assert!(!lock.is_tripped());
        lock.release().done();
    }

    #[test]
    fn a_commanded_trip_latches_like_any_other() {
        let mut lock = running(&[low(), high()], None);
        lock.trip(InterlockCause::Commanded { rule: 7 }).unwrap();
        assert_eq!(lock.take_new_trip(), Some(InterlockCause::Commanded { rule: 7 }));
        assert_eq!(lock.reset(20), Ok(ResetOutcome::Released));
        lock.release().done();
    }

    #[test]
    fn new_limits_apply_to_the_next_reading_and_to_reset() {
        let mut lock = running(&[low()], None);
        lock.set_limits(Limits::new(30.0, 2.0).unwrap());
        assert!(!lock.is_tripped());
        lock.temperature(31.0).unwrap();
        assert_eq!(lock.cause(), Some(InterlockCause::OverTemperature { celsius: 31.0 }));
        lock.release().done();
    }

    #[test]
    fn a_pin_error_is_reported_and_the_write_retried() {
        let err = MockError::Io(ErrorKind::NotConnected);
        let mut lock = running(&[low().with_error(err.clone()), low()], None);
        assert_eq!(lock.vibration(9.0), Err(Error::Pin(err)));
        assert!(lock.is_tripped(), "the latch holds even when the pin did not follow");
        assert_eq!(lock.poll(20), Ok(()));
        assert_eq!(lock.poll(30), Ok(()), "once driven, the pin is left alone");
        lock.release().done();
    }

    #[test]
    fn after_a_failed_write_the_pin_is_driven_again_whatever_the_next_state() {
        // The trip's write failed, so the pin's level is unknown: the release must write it even
        // though the last level that took was "energised".
        let err = MockError::Io(ErrorKind::NotConnected);
        let mut lock = running(&[low().with_error(err.clone()), high()], None);
        assert_eq!(lock.trip(InterlockCause::Commanded { rule: 1 }), Err(Error::Pin(err)));
        assert_eq!(lock.reset(20), Ok(ResetOutcome::Released));
        lock.release().done();
    }

    #[test]
    fn limits_that_could_never_trip_are_refused() {
        assert!(Limits::new(f32::NAN, 1.0).is_err());
        assert!(Limits::new(80.0, f32::INFINITY).is_err());
        assert!(Limits::new(80.0, 0.0).is_err());
        assert_eq!(Limits::new(80.0, -1.0), Err(InvalidLimits { temperature_c: 80.0, vibration_rms_g: -1.0 }));
        let ok = Limits::new(-20.0, 0.5).unwrap();
        assert_eq!((ok.temperature_c(), ok.vibration_rms_g()), (-20.0, 0.5));
    }
}
