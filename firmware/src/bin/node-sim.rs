//! The sensor-node simulator: the firmware's own core (node loop, drivers, sampler, interlock,
//! link) running on the host against simulated sensors and a simulated relay, talking to the
//! gateway over a real serial port or pseudo-terminal.
//!
//! ```text
//! node-sim /dev/pts/7 --temp-ramp 5 --temp-period 100ms
//! ```
//!
//! stdout carries one line per change of the relay, for people and tests to watch:
//! `relay=open cause=power-on`, `relay=closed`, `relay=open cause=commanded rule=4711`. The
//! relay starts open (the interlock's power-on latch) and closes on the gateway's reset command
//! once both sensors have read. While it is closed the machine runs: it vibrates and, with
//! `--temp-ramp`, heats up; stopped, it cools back down. Diagnostics go to stderr.
//!
//! Exit status: 0 after `--duration`, 1 when the port cannot be opened or the line hangs up,
//! 2 for bad arguments.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Write},
    os::{fd::AsFd, unix::fs::OpenOptionsExt},
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use edgeloop_firmware::{
    drivers::{adxl345, adxl345::Adxl345, tmp117, tmp117::Tmp117},
    interlock::{self, Interlock, InterlockCause, Limits, Sensor},
    node_loop::{self, NodeLoop},
    sampler::{self, Sampler},
    sim::{Machine, MachineConfig, SimAdxl345, SimRelay, SimTmp117},
};
use nix::{
    libc,
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::termios::{BaudRate, ControlFlags, SetArg, cfmakeraw, cfsetspeed, tcgetattr, tcsetattr},
};

/// The sensor node's firmware on the host, with a simulated machine, sensors and relay.
#[derive(Debug, Parser)]
#[command(name = "node-sim", version)]
struct Cli {
    /// Serial port or pseudo-terminal to the gateway, e.g. /dev/ttyUSB0 or /dev/pts/7.
    port: PathBuf,
    /// Baud rate of the port (a pseudo-terminal ignores it).
    #[arg(long, default_value_t = 115_200)]
    baud: u32,
    /// Temperature of the cold machine, in °C; it starts there.
    #[arg(long, default_value_t = 25.0, allow_negative_numbers = true)]
    temp_start: f32,
    /// °C per second the temperature climbs while the machine runs (relay closed); it falls back
    /// to --temp-start at the same rate while the machine is stopped.
    #[arg(long, default_value_t = 0.0)]
    temp_ramp: f32,
    /// Vibration amplitude on the X axis while the machine runs, in g.
    #[arg(long, default_value_t = 0.2)]
    vibration: f32,
    /// The node's own temperature limit, in °C (until the gateway sets another).
    #[arg(long, default_value_t = 80.0, allow_negative_numbers = true)]
    temp_limit: f32,
    /// The node's own vibration limit, RMS in g (until the gateway sets another).
    #[arg(long, default_value_t = 2.0)]
    vibration_limit: f32,
    /// Trip the relay when nothing came from the gateway for this long, e.g. "5s" (off when
    /// not given).
    #[arg(long, value_parser = humantime::parse_duration)]
    heartbeat_timeout: Option<Duration>,
    /// Time between two thermometer readings.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    temp_period: Duration,
    /// Time between two of the node's heartbeats.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    heartbeat_period: Duration,
    /// The thermometer stops answering on the bus after this long: a sensor fault.
    #[arg(long, value_parser = humantime::parse_duration)]
    thermometer_fault_after: Option<Duration>,
    /// Stop after this long (by default it runs until killed or the line hangs up).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("node-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let limits = Limits::new(cli.temp_limit, cli.vibration_limit).context("--temp-limit/--vibration-limit")?;
    if !(cli.temp_start.is_finite() && cli.temp_ramp.is_finite() && cli.temp_ramp >= 0.0) {
        bail!("--temp-start must be finite and --temp-ramp finite and 0 or more");
    }
    let port = open_raw(&cli.port, cli.baud)?;

    let machine = Machine::new(MachineConfig {
        ambient_c: cli.temp_start,
        ramp_c_per_s: cli.temp_ramp,
        vibration_g: cli.vibration,
        ..MachineConfig::default()
    });
    let interlock = Interlock::new(
        SimRelay::new(&machine),
        interlock::Config { limits, heartbeat_timeout_ms: cli.heartbeat_timeout.map(millis) },
    );
    let sampler = Sampler::<_, { node_loop::WINDOW }>::new(
        interlock,
        sampler::Config { channels: sampler::Channels::default(), heartbeat_period_ms: millis(cli.heartbeat_period) },
    );
    let mut node = NodeLoop::new(
        Adxl345::new(SimAdxl345::new(&machine, adxl345::ADDRESS_ALT_LOW), adxl345::ADDRESS_ALT_LOW),
        Tmp117::new(SimTmp117::new(&machine, tmp117::ADDRESS_GND), tmp117::ADDRESS_GND),
        sampler,
        node_loop::Config { temperature_period_ms: millis(cli.temp_period), ..node_loop::Config::default() },
    );
    eprintln!(
        "node-sim: on {} at {} baud; machine at {} °C, +{} °C/s while running; limits {} °C, {} g rms",
        cli.port.display(),
        cli.baud,
        cli.temp_start,
        cli.temp_ramp,
        limits.temperature_c(),
        limits.vibration_rms_g()
    );

    let start = Instant::now();
    let mut link = Link { port: &port, dropped: 0 };
    let mut relay_shown = None;
    let mut rx = [0u8; 1024];
    loop {
        let n = link.receive(&mut rx, Duration::from_millis(1))?;
        let elapsed = start.elapsed();
        if cli.duration.is_some_and(|d| elapsed >= d) {
            return Ok(());
        }
        machine.advance_to(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
        if cli.thermometer_fault_after.is_some_and(|after| elapsed >= after) {
            machine.set_bus_fault(Sensor::Thermometer, true);
        }
        // The simulated relay pin cannot fail.
        let Ok(()) = node.step(millis(elapsed), rx.get(..n).unwrap_or(&[]), &mut |frame| link.send(frame));
        let closed = machine.is_running();
        if relay_shown != Some(closed) {
            relay_shown = Some(closed);
            show_relay(closed, node.sampler().interlock().cause());
        }
    }
}

/// Prints the relay's state on stdout, flushed at once: tests and scripts wait for these lines.
fn show_relay(closed: bool, cause: Option<InterlockCause>) {
    let line = match (closed, cause) {
        (true, _) => "relay=closed".to_owned(),
        (false, Some(cause)) => format!("relay=open cause={}", describe(cause)),
        (false, None) => "relay=open".to_owned(),
    };
    let mut out = io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        eprintln!("node-sim: {line} (stdout is gone)");
    }
}

fn describe(cause: InterlockCause) -> String {
    let sensor = |s: Sensor| match s {
        Sensor::Accelerometer => "accelerometer",
        Sensor::Thermometer => "thermometer",
    };
    match cause {
        InterlockCause::PowerOn => "power-on".into(),
        InterlockCause::Commanded { rule } => format!("commanded rule={rule}"),
        InterlockCause::OverTemperature { celsius } => format!("over-temperature celsius={celsius:.2}"),
        InterlockCause::OverVibration { rms_g } => format!("over-vibration rms_g={rms_g:.3}"),
        InterlockCause::SensorFault { sensor: s } => format!("sensor-fault sensor={}", sensor(s)),
        InterlockCause::NoReading { sensor: s } => format!("no-reading sensor={}", sensor(s)),
        InterlockCause::HeartbeatLost { silent_ms } => format!("heartbeat-lost silent_ms={silent_ms}"),
    }
}

/// Opens a serial port or pty raw (no echo, no CR/LF translation, no control characters),
/// non-blocking.
fn open_raw(path: &Path, baud: u32) -> anyhow::Result<File> {
    let port = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot open serial port {}", path.display()))?;
    let speed = baud_rate(baud).with_context(|| format!("baud rate {baud} is not supported"))?;
    let mut t = tcgetattr(&port).with_context(|| format!("{} is not a serial port", path.display()))?;
    cfmakeraw(&mut t);
    t.control_flags |= ControlFlags::CLOCAL | ControlFlags::CREAD;
    cfsetspeed(&mut t, speed).with_context(|| format!("cannot set {baud} baud on {}", path.display()))?;
    tcsetattr(&port, SetArg::TCSANOW, &t).with_context(|| format!("cannot configure {}", path.display()))?;
    Ok(port)
}

fn baud_rate(baud: u32) -> Option<BaudRate> {
    Some(match baud {
        9_600 => BaudRate::B9600,
        19_200 => BaudRate::B19200,
        38_400 => BaudRate::B38400,
        57_600 => BaudRate::B57600,
        115_200 => BaudRate::B115200,
        230_400 => BaudRate::B230400,
        460_800 => BaudRate::B460800,
        921_600 => BaudRate::B921600,
        _ => return None,
    })
}

/// The node's end of the line.
struct Link<'a> {
    port: &'a File,
    /// Frames not (fully) written because the line stayed blocked.
    dropped: u64,
}

impl Link<'_> {
    /// Waits up to `wait` for bytes from the gateway and reads what is there.
    ///
    /// # Errors
    /// When the line hung up (the other end of a pty closed, a USB adapter unplugged).
    fn receive(&mut self, out: &mut [u8], wait: Duration) -> anyhow::Result<usize> {
        let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(self.port.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) => return Ok(0),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok(0),
            Err(e) => return Err(e).context("cannot wait for the serial port"),
        }
        match Read::read(&mut self.port, out) {
            Ok(0) => bail!("the serial line hung up"),
            Ok(n) => Ok(n),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => Ok(0),
            Err(e) => Err(e).context("the serial line failed"),
        }
    }

    /// Writes one frame; a line blocked for 100 ms (nobody reading) costs the frame, as a full
    /// transmit queue does on the board.
    fn send(&mut self, mut frame: &[u8]) {
        let deadline = Instant::now() + Duration::from_millis(100);
        while !frame.is_empty() {
            match Write::write(&mut self.port, frame) {
                Ok(n) => frame = frame.get(n..).unwrap_or(&[]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    let mut fds = [PollFd::new(self.port.as_fd(), PollFlags::POLLOUT)];
                    let _ = poll(&mut fds, PollTimeout::from(10u8));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.dropped += 1;
                    if self.dropped.is_power_of_two() {
                        eprintln!("node-sim: frame dropped ({} so far): {e}", self.dropped);
                    }
                    return;
                }
            }
        }
    }
}
