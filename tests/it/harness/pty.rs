//! A real pseudo-terminal pair playing a serial line: the agent opens the slave side by path (a
//! symlink we control, so "unplugging" and "replugging" can keep the path), the test plays the
//! sensor node on the master side.

use std::{
    fs::File,
    io::{Read, Write},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::{
    fcntl::{FcntlArg, OFlag, fcntl},
    pty::openpty,
    sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr},
    unistd::ttyname,
};

pub struct Pty {
    master: File,
    _slave: OwnedFd,
    _link: PathBuf,
}

impl Pty {
    /// Opens a pty pair and points `link` at its slave side.
    pub fn open(link: &Path) -> Self {
        let pair = openpty(None, None).unwrap();
        // A slave starts in cooked mode (echo, CR/LF translation, ^C...): make it raw at once so
        // nothing written before the agent opens it is mangled.
        let mut t = tcgetattr(&pair.slave).unwrap();
        cfmakeraw(&mut t);
        tcsetattr(&pair.slave, SetArg::TCSANOW, &t).unwrap();
        let path = ttyname(&pair.slave).unwrap();
        let flags = OFlag::from_bits_truncate(fcntl(&pair.master, FcntlArg::F_GETFL).unwrap());
        fcntl(&pair.master, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).unwrap();
        let _ = std::fs::remove_file(link);
        std::os::unix::fs::symlink(&path, link).unwrap();
        Self { master: File::from(pair.master), _slave: pair.slave, _link: link.into() }
    }

    /// Writes bytes as the sensor node.
    pub fn write(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.master.write(bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => panic!("pty write failed: {e}"),
            }
        }
    }

    /// Reads what the agent wrote, until at least `min` bytes arrived or `timeout` passed.
    pub fn read(&mut self, min: usize, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        while out.len() < min && Instant::now() < deadline {
            match self.master.read(&mut buf) {
                Ok(0) => std::thread::sleep(Duration::from_millis(2)),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(2)),
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        out
    }
}
