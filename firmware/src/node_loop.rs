//! One turn of the node's main loop, the same on every board and in the host simulator.
//!
//! A board owns the clock, the bus and the UART; each time round its loop it calls
//! [`NodeLoop::step`] with the time, the bytes the gateway sent since the last turn, and a place
//! to put outgoing frames. The step processes the gateway's commands first (a trip is acted on
//! before anything else), then reads the accelerometer's FIFO and, when due, the thermometer,
//! then lets the interlock check the gateway's heartbeat.
//!
//! A driver that fails is a sensor fault (the interlock trips on it) and is initialised again
//! after [`Config::retry_ms`]; until a good reading follows, the fault blocks reset. So is an
//! accelerometer that stops delivering samples: a reset ADXL345 sits in standby with an empty
//! FIFO and answers every read, which no bus error would ever show.

use embedded_hal::{digital::OutputPin, i2c::I2c};

use crate::drivers::adxl345::{self, Acceleration, Adxl345, FIFO_DEPTH};
use crate::drivers::tmp117::{self, Tmp117};
use crate::sampler::{PinResult, Sampler};

/// The window length (samples per axis) the boards and the simulator use: 160 ms at 3200 Hz.
pub const WINDOW: usize = 512;

/// When the loop reads what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub accelerometer: adxl345::Config,
    pub thermometer: tmp117::Config,
    /// Time between two thermometer reads; the first comes one period after its initialisation,
    /// once the first conversion is done.
    pub temperature_period_ms: u64,
    /// A failed driver is initialised again after this long.
    pub retry_ms: u64,
    /// An accelerometer with no new sample for this long counts as failed.
    pub accelerometer_stall_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            accelerometer: adxl345::Config::default(),
            thermometer: tmp117::Config::default(),
            temperature_period_ms: 1_000,
            retry_ms: 500,
            accelerometer_stall_ms: 100,
        }
    }
}

/// Whether a driver is working.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not initialised (yet, or again after a failure); the next try is due at this time.
    Down { retry_at_ms: u64 },
    /// Initialised; the time of its last good data.
    Up { last_data_ms: u64 },
}

/// The accelerometer stopped delivering samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stalled;

/// The node's sensors, sampler and interlock, driven one loop turn at a time.
pub struct NodeLoop<A, T, P, const N: usize> {
    accelerometer: Adxl345<A>,
    thermometer: Tmp117<T>,
    sampler: Sampler<P, N>,
    config: Config,
    accelerometer_state: State,
    thermometer_state: State,
    next_temperature_ms: u64,
    fifo: [Acceleration; FIFO_DEPTH],
    /// Driver failures (initialisation, reads, stalls) since start, for diagnostics.
    pub sensor_failures: u32,
}

impl<A: I2c, T: I2c, P: OutputPin, const N: usize> NodeLoop<A, T, P, N> {
    /// Takes the drivers (not initialised yet: the first step does that) and the sampler.
    pub fn new(accelerometer: Adxl345<A>, thermometer: Tmp117<T>, sampler: Sampler<P, N>, config: Config) -> Self {
        Self {
            accelerometer,
            thermometer,
            sampler,
            config,
            accelerometer_state: State::Down { retry_at_ms: 0 },
            thermometer_state: State::Down { retry_at_ms: 0 },
            next_temperature_ms: 0,
            fifo: [Acceleration::default(); FIFO_DEPTH],
            sensor_failures: 0,
        }
    }

    pub fn sampler(&self) -> &Sampler<P, N> {
        &self.sampler
    }

    /// One turn of the loop at `now_ms` (monotonic), with the bytes `rx` that came from the
    /// gateway since the last turn; frames go to `emit`, one whole frame per call.
    ///
    /// # Errors
    /// The first error of the relay pin in this turn, after all the turn's other work was done;
    /// the interlock drives the pin again on the next turn.
    pub fn step(&mut self, now_ms: u64, rx: &[u8], emit: &mut impl FnMut(&[u8])) -> PinResult<P> {
        let mut result = Ok(());
        for &byte in rx {
            keep_first(&mut result, self.sampler.on_byte(now_ms, byte, emit));
        }
        keep_first(&mut result, self.accelerometer(now_ms, emit));
        keep_first(&mut result, self.thermometer(now_ms, emit));
        keep_first(&mut result, self.sampler.poll(now_ms, emit));
        result
    }

    fn accelerometer(&mut self, now_ms: u64, emit: &mut impl FnMut(&[u8])) -> PinResult<P> {
        match self.accelerometer_state {
            State::Down { retry_at_ms } if now_ms >= retry_at_ms => {
                match self.accelerometer.init(self.config.accelerometer) {
                    Ok(()) => {
                        self.accelerometer_state = State::Up { last_data_ms: now_ms };
                        Ok(())
                    }
                    Err(e) => self.accelerometer_failed(now_ms, Err(e), emit),
                }
            }
            State::Down { .. } => Ok(()),
            State::Up { last_data_ms } => match self.accelerometer.read_fifo_g(&mut self.fifo) {
                Ok(0) if now_ms.saturating_sub(last_data_ms) > self.config.accelerometer_stall_ms => {
                    self.accelerometer_failed(now_ms, Err(Stalled), emit)
                }
                Ok(0) => Ok(()),
                Ok(n) => {
                    self.accelerometer_state = State::Up { last_data_ms: now_ms };
                    let samples = self.fifo.get(..n).unwrap_or(&[]);
                    self.sampler.on_acceleration(Ok::<_, Stalled>(samples), emit)
                }
                Err(e) => self.accelerometer_failed(now_ms, Err(e), emit),
            },
        }
    }

    fn accelerometer_failed<E>(
        &mut self,
        now_ms: u64,
        error: Result<&[Acceleration], E>,
        emit: &mut impl FnMut(&[u8]),
    ) -> PinResult<P> {
        self.sensor_failures = self.sensor_failures.wrapping_add(1);
        self.accelerometer_state = State::Down { retry_at_ms: now_ms.saturating_add(self.config.retry_ms) };
        self.sampler.on_acceleration(error, emit)
    }

    fn thermometer(&mut self, now_ms: u64, emit: &mut impl FnMut(&[u8])) -> PinResult<P> {
        match self.thermometer_state {
            State::Down { retry_at_ms } if now_ms >= retry_at_ms => {
                match self.thermometer.init(self.config.thermometer) {
                    Ok(()) => {
                        self.thermometer_state = State::Up { last_data_ms: now_ms };
                        self.next_temperature_ms = now_ms.saturating_add(self.config.temperature_period_ms);
                        Ok(())
                    }
                    Err(e) => self.thermometer_failed(now_ms, e, emit),
                }
            }
            State::Down { .. } => Ok(()),
            State::Up { .. } if now_ms < self.next_temperature_ms => Ok(()),
            State::Up { .. } => {
                self.next_temperature_ms = now_ms.saturating_add(self.config.temperature_period_ms);
                match self.thermometer.read_celsius() {
                    Ok(celsius) => {
                        self.thermometer_state = State::Up { last_data_ms: now_ms };
                        self.sampler.on_temperature(Ok::<_, tmp117::Error<T::Error>>(celsius), emit)
                    }
                    Err(e) => self.thermometer_failed(now_ms, e, emit),
                }
            }
        }
    }

    fn thermometer_failed(
        &mut self,
        now_ms: u64,
        error: tmp117::Error<T::Error>,
        emit: &mut impl FnMut(&[u8]),
    ) -> PinResult<P> {
        self.sensor_failures = self.sensor_failures.wrapping_add(1);
        self.thermometer_state = State::Down { retry_at_ms: now_ms.saturating_add(self.config.retry_ms) };
        self.sampler.on_temperature(Err::<f32, _>(error), emit)
    }
}

fn keep_first<E>(acc: &mut Result<(), E>, next: Result<(), E>) {
    if acc.is_ok() {
        *acc = next;
    }
}

#[cfg(test)]
mod tests {
    use edgeloop_shared::frame::{self, FrameDecoder, GatewayMessage, MAX_WIRE_FRAME, NodeMessage};
    use embedded_hal::i2c::{ErrorKind, ErrorType, Operation};

    use super::*;
    use crate::interlock::{self, Interlock, InterlockCause, Limits, Sensor};
    use crate::sampler;
    use crate::sim::{Machine, MachineConfig, SimAdxl345, SimRelay, SimTmp117};

    const ADXL: u8 = adxl345::ADDRESS_ALT_LOW;
    const TMP: u8 = tmp117::ADDRESS_GND;

    /// The loop on simulated hardware with its frames as the agent decodes them.
    struct Bench<'a, A> {
        node: NodeLoop<A, SimTmp117<'a>, SimRelay<'a>, 64>,
        machine: &'a Machine,
        now_ms: u64,
        wire: Vec<u8>,
    }

    impl<'a, A: I2c> Bench<'a, A> {
        fn new(machine: &'a Machine, accelerometer: A) -> Self {
            let config = interlock::Config { limits: Limits::new(60.0, 1.0).unwrap(), heartbeat_timeout_ms: None };
            let sampler = Sampler::new(
                Interlock::new(SimRelay::new(machine), config),
                sampler::Config { channels: sampler::Channels::default(), heartbeat_period_ms: 1_000 },
            );
            let node = NodeLoop::new(
                Adxl345::new(accelerometer, ADXL),
                Tmp117::new(SimTmp117::new(machine, TMP), TMP),
                sampler,
                Config { temperature_period_ms: 100, ..Config::default() },
            );
            Self { node, machine, now_ms: 0, wire: Vec::new() }
        }

        /// Runs the loop once a millisecond until `until_ms`, the gateway's `command` in the first turn.
        fn run(&mut self, until_ms: u64, command: Option<GatewayMessage>) -> Vec<NodeMessage> {
            let mut rx = Vec::new();
            if let Some(c) = command {
                let mut buf = [0u8; MAX_WIRE_FRAME];
                let n = frame::encode(&c, &mut buf).unwrap();
                rx.extend_from_slice(&buf[..n]);
            }
            while self.now_ms < until_ms {
                self.now_ms += 1;
                self.machine.advance_to(self.now_ms * 1_000);
                let wire = &mut self.wire;
                self.node.step(self.now_ms, &std::mem::take(&mut rx), &mut |f| wire.extend_from_slice(f)).unwrap();
            }
            let mut dec = FrameDecoder::<MAX_WIRE_FRAME>::new();
            let mut out = Vec::new();
            dec.feed::<NodeMessage>(&std::mem::take(&mut self.wire), |r| out.push(r.unwrap()));
            out
        }

        fn cause(&self) -> Option<InterlockCause> {
            self.node.sampler().interlock().cause()
        }
    }

    fn machine(ramp_c_per_s: f32) -> Machine {
        Machine::new(MachineConfig { ramp_c_per_s, vibration_g: 0.5, ..MachineConfig::default() })
    }

    fn temperatures(msgs: &[NodeMessage]) -> Vec<f32> {
        msgs.iter()
            .filter_map(|m| if let NodeMessage::Reading { value, .. } = m { Some(*value) } else { None })
            .collect()
    }

    #[test]
    fn the_gateway_starts_the_machine_with_a_reset_and_stops_it_with_a_trip() {
        let m = machine(0.0);
        let mut b = Bench::new(&m, SimAdxl345::new(&m, ADXL));
        let msgs = b.run(350, None);
        assert_eq!(temperatures(&msgs), [25.0, 25.0, 25.0], "one reading per period after the init");
        assert!(msgs.iter().any(|m| matches!(m, NodeMessage::Features { .. })), "{msgs:?}");
        assert!(!m.is_running());
        assert_eq!(b.cause(), Some(InterlockCause::PowerOn));

        let msgs = b.run(360, Some(GatewayMessage::Reset));
        assert!(matches!(msgs[..], [NodeMessage::Heartbeat { tripped: false, .. }, ..]), "{msgs:?}");
        assert!(m.is_running());
        let msgs = b.run(1_000, None);
        let rms: Vec<f32> = msgs
            .iter()
            .filter_map(|m| if let NodeMessage::Features { channel: 0, rms, .. } = m { Some(*rms) } else { None })
            .collect();
        assert!(rms.iter().any(|r| (r - 0.354).abs() < 0.02), "0.5 g sine while running: {rms:?}");

        let msgs = b.run(1_001, Some(GatewayMessage::Trip { rule: 9 }));
        // The command is acted on first in its turn, before the sensors are read.
        assert!(
            matches!(msgs[0], NodeMessage::Tripped { cause: InterlockCause::Commanded { rule: 9 }, .. }),
            "{msgs:?}"
        );
        assert!(!m.is_running());
    }

    #[test]
    fn the_node_stops_a_machine_over_its_own_limit() {
        let m = machine(100.0);
        let mut b = Bench::new(&m, SimAdxl345::new(&m, ADXL));
        b.run(300, None);
        b.run(301, Some(GatewayMessage::Reset));
        assert!(m.is_running());
        // 25 °C + 100 °C/s passes the 60 °C limit 0.35 s later; the next reading sees it.
        let msgs = b.run(1_000, None);
        assert!(!m.is_running());
        let Some(InterlockCause::OverTemperature { celsius }) = b.cause() else { panic!("{:?}", b.cause()) };
        assert!(celsius > 60.0 && celsius < 72.0, "{celsius}");
        assert!(
            msgs.iter()
                .any(|m| matches!(m, NodeMessage::Tripped { cause: InterlockCause::OverTemperature { .. }, .. }))
        );
        // Stopped, it cools down; once under the limit the gateway may restart it.
        b.run(2_000, None);
        let msgs = b.run(2_001, Some(GatewayMessage::Reset));
        assert!(m.is_running(), "{msgs:?}");
    }

    #[test]
    fn a_thermometer_fault_trips_blocks_reset_and_is_retried() {
        let m = machine(0.0);
        let mut b = Bench::new(&m, SimAdxl345::new(&m, ADXL));
        b.run(300, None);
        b.run(301, Some(GatewayMessage::Reset));
        m.set_bus_fault(Sensor::Thermometer, true);
        let msgs = b.run(450, None);
        assert_eq!(b.cause(), Some(InterlockCause::SensorFault { sensor: Sensor::Thermometer }));
        assert!(msgs.iter().any(|m| matches!(m, NodeMessage::Tripped { .. })));
        let msgs = b.run(451, Some(GatewayMessage::Reset));
        assert!(matches!(msgs[..], [NodeMessage::ResetRefused { .. }]), "{msgs:?}");

        m.set_bus_fault(Sensor::Thermometer, false);
        // The read at 400 ms failed: initialised again at 900 ms, read one period later.
        let msgs = b.run(1_200, None);
        assert_eq!(temperatures(&msgs), [25.0, 25.0]);
        assert_eq!(b.node.sensor_failures, 1);
        b.run(1_201, Some(GatewayMessage::Reset));
        assert!(m.is_running());
    }

    #[test]
    fn limits_raw_streaming_and_ping_from_the_gateway_are_obeyed() {
        let m = machine(0.0);
        let mut b = Bench::new(&m, SimAdxl345::new(&m, ADXL));
        b.run(300, None);
        b.run(301, Some(GatewayMessage::Reset));
        let msgs = b.run(302, Some(GatewayMessage::StreamRaw { enabled: true }));
        assert!(msgs.is_empty(), "{msgs:?}");
        let msgs = b.run(340, None);
        let raw = msgs.iter().filter(|m| matches!(m, NodeMessage::RawBlock { .. })).count();
        assert!(raw >= 3, "a block per axis every 10 ms at 3200 Hz: {msgs:?}");
        b.run(341, Some(GatewayMessage::StreamRaw { enabled: false }));
        let msgs = b.run(400, None);
        assert!(msgs.iter().all(|m| !matches!(m, NodeMessage::RawBlock { .. })), "{msgs:?}");

        let msgs = b.run(401, Some(GatewayMessage::Ping { seq: 5 }));
        assert!(matches!(msgs[0], NodeMessage::Heartbeat { uptime_ms: 401, tripped: false, .. }), "{msgs:?}");
        // 0.5 g running vibration is 0.35 g RMS: a 0.3 g limit stops the machine at the next window.
        let msgs = b.run(402, Some(GatewayMessage::SetLimits { temperature_c: 60.0, vibration_rms_g: 0.3 }));
        assert!(matches!(msgs[0], NodeMessage::Limits { vibration_rms_g: 0.3, .. }), "{msgs:?}");
        b.run(500, None);
        assert!(matches!(b.cause(), Some(InterlockCause::OverVibration { .. })), "{:?}", b.cause());
        assert!(!m.is_running());
    }

    /// An ADXL345 that answers but never has a sample: one reset behind the node's back.
    struct Frozen;

    impl ErrorType for Frozen {
        type Error = ErrorKind;
    }

    impl I2c for Frozen {
        fn transaction(&mut self, _: u8, ops: &mut [Operation<'_>]) -> Result<(), ErrorKind> {
            let mut register = 0;
            for op in ops {
                match op {
                    Operation::Write(bytes) => register = bytes.first().copied().unwrap_or(0),
                    Operation::Read(out) => out.fill(if register == 0 { adxl345::DEVICE_ID } else { 0 }),
                }
            }
            Ok(())
        }
    }

    #[test]
    fn an_accelerometer_that_stops_delivering_is_a_fault() {
        let m = machine(0.0);
        let mut b = Bench::new(&m, Frozen);
        b.run(100, None);
        assert_eq!(b.node.sensor_failures, 0, "within the stall time");
        b.run(150, None);
        assert_eq!(b.node.sensor_failures, 1);
        let msgs = b.run(151, Some(GatewayMessage::Reset));
        assert!(
            matches!(
                msgs[..],
                [NodeMessage::ResetRefused {
                    cause: InterlockCause::SensorFault { sensor: Sensor::Accelerometer },
                    ..
                }]
            ),
            "{msgs:?}"
        );
    }
}
