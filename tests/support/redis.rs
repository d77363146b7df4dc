//! A real `redis-server` child process on a loopback port, for the tests of
//! the Redis-backed store. It owns only that process: it does not touch the
//! rest of the harness, and tests include it on its own with
//! `#[path = "support/redis.rs"] mod redis_support;`.
//!
//! There is no skipping: when `redis-server` is not installed the test fails
//! and says so (CI installs it in `.ci/run`, step 1).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long one server may take to accept its first `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Fresh ports tried before giving up (another process may take a port
/// between our probe and the server's bind).
const PORT_ATTEMPTS: usize = 5;

/// A running `redis-server`, killed on drop. Nothing is persisted.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    extra_args: Vec<String>,
}

// === impl RedisServer ===

impl RedisServer {
    /// Starts a server on a free loopback port.
    pub fn start() -> RedisServer {
        RedisServer::start_with_args(&[])
    }

    /// Starts a server on a free loopback port with extra command-line
    /// arguments (e.g. `["--requirepass", "pw"]`).
    pub fn start_with_args(args: &[&str]) -> RedisServer {
        let extra_args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            match spawn(port, &extra_args) {
                Ok(child) => {
                    return RedisServer {
                        child: Some(child),
                        port,
                        extra_args,
                    }
                }
                Err(e) => last_error = e,
            }
        }
        panic!("redis-server did not start after {PORT_ATTEMPTS} ports: {last_error}");
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server and waits for it to exit; the port then refuses
    /// connections until [`RedisServer::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty. Stops it first if
    /// it is running.
    pub fn restart(&mut self) {
        self.stop();
        // The old listener is gone once the process has exited, but be
        // patient with a port the kernel has not released yet.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match spawn(self.port, &self.extra_args) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(e) if Instant::now() >= deadline => {
                    panic!("redis-server did not restart on port {}: {e}", self.port)
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port that was free a moment ago: bind `127.0.0.1:0`, read, release.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener
        .local_addr()
        .expect("local addr of a bound listener")
        .port()
}

/// Starts `redis-server` on `port` and waits until it answers `PING`.
/// Err when it exits or stays silent (e.g. the port was taken); panics when
/// the program is not installed, since no retry can fix that.
fn spawn(port: u16, extra_args: &[String]) -> Result<Child, String> {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .args(["--loglevel", "warning"])
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `redis-server` ({e}); the Redis store tests need it: \
                 install the `redis-server` package (.ci/run does)"
            )
        });
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}: {}", output_of(&mut child)));
        }
        if answers_ping(addr) {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "no PING reply within {START_TIMEOUT:?}: {}",
                output_of(&mut child)
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a Redis at `addr` answers an inline `PING`. The reply is read
/// until the `+PONG` line is complete, or `-NOAUTH` when a password is set
/// (that server is up too).
fn answers_ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = Vec::new();
    let mut buf = [0u8; 64];
    while !reply.ends_with(b"\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
    }
    reply.starts_with(b"+PONG") || reply.starts_with(b"-NOAUTH")
}

/// Whatever an exited (or killed) server wrote, for the failure message.
fn output_of(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut text);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut text);
    }
    text.trim().to_string()
}
