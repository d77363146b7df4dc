//! Helpers for `tests/cli.rs`: run the built `weir` binary as a child process
//! with bounded waits, write temporary config files, serve a tiny HTTP/1.1
//! upstream, and speak raw HTTP/1.1 over std sockets. Only std is used, so
//! these tests depend on nothing but the binary under test.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long any single child-process command may take before it is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A `Command` for the binary under test.
pub fn weir() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    // The tests read weir's own log lines; an inherited RUST_LOG must not
    // silence or flood them.
    cmd.env_remove("RUST_LOG");
    cmd
}

/// The path of a file in the repository (tests run from the crate root).
pub fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
}

impl Output {
    /// The exit code, or -1 when the process was killed by a signal.
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }
}

/// Runs `cmd` to completion, killing it after [`COMMAND_TIMEOUT`].
pub fn run(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut guard = ChildGuard(cmd.spawn().expect("spawn weir"));
    let stdout = drain(guard.0.stdout.take().expect("piped stdout"));
    let stderr = drain(guard.0.stderr.take().expect("piped stderr"));
    let status = guard
        .wait_timeout(COMMAND_TIMEOUT)
        .unwrap_or_else(|| panic!("weir did not exit within {COMMAND_TIMEOUT:?}"));
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Owns a child process and kills it when dropped, so that a failing test
/// never leaves a gateway running.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Waits up to `timeout` for the child to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Starts `cmd` with stdout discarded and stderr read line by line: each
/// line is kept in the returned log and sent on the returned channel.
pub fn spawn_logged(mut cmd: Command) -> (ChildGuard, Receiver<String>, Arc<Mutex<Vec<String>>>) {
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = ChildGuard(cmd.spawn().expect("spawn weir"));
    let stderr = child.0.stderr.take().expect("piped stderr");
    let (tx, lines) = mpsc::channel();
    let log = Arc::new(Mutex::new(Vec::new()));
    let keep = log.clone();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            keep.lock().expect("log lock").push(line.clone());
            // Once nobody waits for lines, keep draining the pipe so the
            // child never blocks on a full stderr.
            let _ = tx.send(line);
        }
    });
    (child, lines, log)
}

/// A `weir run` child whose stderr is read line by line, so the test can wait
/// for the "listening" lines and show the whole log when something fails.
pub struct Gateway {
    /// The process; killed on drop.
    pub child: ChildGuard,
    lines: Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// Starts `weir run --config <path>` with logs at `info`.
    pub fn start(config: &Path) -> Gateway {
        let mut cmd = weir();
        cmd.args(["--log-level", "info", "run", "--config"])
            .arg(config)
            .stdin(Stdio::null());
        let (child, lines, log) = spawn_logged(cmd);
        Gateway { child, lines, log }
    }

    /// Everything weir logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// Waits for the line logging a bound address that `matches` accepts, and
    /// returns that address (`... address=127.0.0.1:41234`).
    pub fn wait_for_address(&self, what: &str, matches: impl Fn(&str) -> bool) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if matches(&line) => {
                    return logged_address(&line)
                        .unwrap_or_else(|| panic!("no address in {what} line: {line}"));
                }
                Ok(_) => {}
                Err(_) => panic!("weir never logged its {what} address; log:\n{}", self.log()),
            }
        }
    }
}

/// The `address=` field of a log line.
pub fn logged_address(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once("address=")?;
    let value = rest.split_whitespace().next()?.trim_matches('"');
    value.parse().ok()
}

/// A configuration file in the temp directory, removed on drop.
pub struct TempConfig {
    path: PathBuf,
}

impl TempConfig {
    /// Writes `text` to a fresh file whose name includes `label`.
    pub fn new(label: &str, text: &str) -> TempConfig {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("weir-cli-{}-{n}-{label}.yaml", std::process::id()));
        std::fs::write(&path, text).expect("write temp config");
        TempConfig { path }
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file's content in one step (write aside, rename), as
    /// deploy tools do, so a watcher never reads half a file.
    pub fn replace(&self, text: &str) {
        let aside = self.path.with_extension("yaml.new");
        std::fs::write(&aside, text).expect("write temp config");
        std::fs::rename(&aside, &self.path).expect("rename temp config");
    }

    /// The path as weir prints it in error messages.
    pub fn display(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The 1-based line of the first line of `text` containing `needle`.
pub fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{needle:?} not in the config text"))
}

/// Longest a gated response waits for [`Upstream::release`].
const GATE_TIMEOUT: Duration = Duration::from_secs(10);

/// A tiny HTTP/1.1 upstream on `127.0.0.1:0`: every request gets `200 ok`,
/// the path given to [`Upstream::start`] only after a delay *and* once the
/// test has called [`Upstream::release`] (or after [`GATE_TIMEOUT`]), so a
/// test decides when an in-flight request may finish. It counts the requests
/// it has received (before any delay).
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    received: Arc<AtomicUsize>,
    gate: Arc<Gate>,
    stop: Arc<AtomicBool>,
}

#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn wait(&self, timeout: Duration) {
        let open = self.open.lock().expect("gate lock");
        let _ = self
            .opened
            .wait_timeout_while(open, timeout, |open| !*open)
            .expect("gate lock");
    }
}

impl Upstream {
    /// Starts serving; requests for `slow_path` are answered after `delay`
    /// and after [`Upstream::release`].
    pub fn start(slow_path: &'static str, delay: Duration) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let received = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Gate::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (count, held, halt) = (received.clone(), gate.clone(), stop.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if halt.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (count, held) = (count.clone(), held.clone());
                thread::spawn(move || serve_upstream(stream, slow_path, delay, &count, &held));
            }
        });
        Upstream {
            addr,
            received,
            gate,
            stop,
        }
    }

    /// Requests received so far.
    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }

    /// Lets held responses go (once their delay has passed).
    pub fn release(&self) {
        *self.gate.open.lock().expect("gate lock") = true;
        self.gate.opened.notify_all();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.release();
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn serve_upstream(
    stream: TcpStream,
    slow_path: &str,
    delay: Duration,
    count: &AtomicUsize,
    gate: &Gate,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut writer = stream;
    loop {
        let Some(head) = read_head(&mut reader) else {
            return;
        };
        count.fetch_add(1, Ordering::SeqCst);
        let path = head
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("/")
            .to_owned();
        // Requests in these tests carry no body.
        if path == slow_path {
            // The delay is the point of this path, not a wait for something.
            thread::sleep(delay);
            gate.wait(GATE_TIMEOUT);
        }
        let body = format!("ok {path}\n");
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// Reads a request or response head up to the blank line.
fn read_head(reader: &mut impl BufRead) -> Option<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        if line == "\r\n" || line == "\n" {
            return Some(head);
        }
        head.push_str(&line);
    }
}

/// A response read off a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// The head, lower-cased, for header checks.
    pub head: String,
    /// The body (by `content-length`).
    pub body: String,
}

/// An HTTP/1.1 client connection over a plain `TcpStream`, kept alive
/// between requests; every read is bounded by `timeout`.
pub struct RawClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RawClient {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<RawClient> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(RawClient {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Sends `GET path` and reads the response.
    pub fn get(&mut self, path: &str) -> std::io::Result<RawResponse> {
        self.send("GET", path)
    }

    /// Sends `method path` without a body and reads the response.
    pub fn send(&mut self, method: &str, path: &str) -> std::io::Result<RawResponse> {
        let length = if method == "POST" {
            "content-length: 0\r\n"
        } else {
            ""
        };
        let request = format!("{method} {path} HTTP/1.1\r\nhost: weir.test\r\n{length}\r\n");
        self.writer.write_all(request.as_bytes())?;
        let head = read_head(&mut self.reader).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            )
        })?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let head = head.to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok(RawResponse {
            status,
            head,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// Closes the connection.
    pub fn close(self) {
        let _ = self.writer.shutdown(Shutdown::Both);
    }
}

/// Polls `check` every 10 ms until it returns `Some` or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}
