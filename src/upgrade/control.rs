//! The control socket and its protocol: the running process's side
//! ([`ControlSocket`]) and the successor's ([`Takeover`]), and the wire
//! (JSON lines, descriptors attached with `SCM_RIGHTS`). Must not touch:
//! which socket serves which listener (the parent module's
//! `InheritedListeners`), nor anything of the gateway.

use std::io::{IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{Inherited, InheritedListeners, Instance, ListeningSocket, Role, UpgradeError};

/// Version of the control protocol; a successor speaking another is refused.
const PROTOCOL: u32 = 1;
/// Longest message accepted on the control socket.
const MAX_MESSAGE: usize = 64 * 1024;
/// Most descriptors one message can carry (the kernel's `SCM_MAX_FD`).
const MAX_SOCKETS: usize = 253;
/// How long either side waits for the other's next message.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the running process waits for its successor to serve: the
/// successor compiles its configuration and starts in between.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// This build's version, as reported to the other side.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The control socket every `weir run` serves (see the `upgrade` module doc).
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    listener: Option<UnixListener>,
    /// Device and inode of the socket file, so that only this process's own
    /// file is removed (after a handoff the path names the successor's).
    file: (u64, u64),
    handed_over: bool,
    closed: Arc<AtomicBool>,
}

/// A takeover in progress: the sockets are received, and the old process
/// serves on until [`Takeover::complete`].
#[derive(Debug)]
pub struct Takeover {
    stream: UnixStream,
    old_pid: u32,
    old_version: String,
    listeners: InheritedListeners,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Message {
    Hello {
        protocol: u32,
        pid: u32,
    },
    Status,
    Sockets {
        pid: u32,
        version: String,
        sockets: Vec<SocketInfo>,
    },
    Ready,
    Released,
    Instance {
        pid: u32,
        version: String,
    },
    Refused {
        reason: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct SocketInfo {
    role: Role,
    configured: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Serving,
    Offering,
    HandedOver,
}

/// What the control socket's connection handlers share.
struct Shared {
    sockets: Arc<Vec<ListeningSocket>>,
    phase: Mutex<Phase>,
    closed: Arc<AtomicBool>,
    owner: u32,
}

/// Asks the weir serving `path` who it is.
pub fn query(path: &Path) -> Result<Instance, UpgradeError> {
    let stream = connect(path)?;
    send(&stream, &Message::Status, &[])?;
    match receive(&stream, &mut Vec::new())? {
        Message::Instance { pid, version } => Ok(Instance { pid, version }),
        Message::Refused { reason } => Err(UpgradeError::Refused(reason)),
        other => Err(unexpected(&other)),
    }
}

// === impl ControlSocket ===

impl ControlSocket {
    /// Creates the control socket at `path`, for this user only. A stale
    /// socket file (no process answers on it) is replaced; a live one means
    /// another weir serves it, and is an error.
    pub fn bind(path: &Path) -> Result<ControlSocket, UpgradeError> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(UpgradeError::Bind {
                    path: path.to_owned(),
                    error: std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "the path exists and is not a socket",
                    ),
                })
            }
            Ok(_) if UnixStream::connect(path).is_ok() => {
                return Err(UpgradeError::InstanceRunning {
                    path: path.to_owned(),
                })
            }
            _ => {}
        }
        Self::bind_replacing(path)
    }

    /// Creates the control socket at `path`, replacing whatever socket is
    /// there: the successor taking the path over after a handoff.
    pub fn bind_replacing(path: &Path) -> Result<ControlSocket, UpgradeError> {
        let err = |error| UpgradeError::Bind {
            path: path.to_owned(),
            error,
        };
        let name = path.file_name().ok_or_else(|| {
            err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a file path",
            ))
        })?;
        let mut tmp_name = name.to_owned();
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        // A leftover of an earlier process that had this pid.
        let _ = std::fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp).map_err(err)?;
        // Bound under a temporary name, restricted, then renamed into place:
        // the path switches from the old socket to this one atomically, so a
        // concurrent `--upgrade` reaches one of them, never neither.
        let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e));
        }
        let meta = std::fs::metadata(path).map_err(err)?;
        Ok(ControlSocket {
            path: path.to_owned(),
            listener: Some(listener),
            file: (meta.dev(), meta.ino()),
            handed_over: false,
            closed: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Where the socket is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Answers on the control socket until a successor has taken `sockets`
    /// over, and returns the successor's pid. Dropping the future stops
    /// answering and removes the socket file.
    pub async fn serve(mut self, sockets: Arc<Vec<ListeningSocket>>) -> u32 {
        let listener = self.listener.take().and_then(|l| {
            l.set_nonblocking(true).ok()?;
            tokio::net::UnixListener::from_std(l).ok()
        });
        let Some(listener) = listener else {
            tracing::error!(path = %self.path.display(), "cannot serve the upgrade socket");
            return std::future::pending().await;
        };
        tracing::info!(path = %self.path.display(), "upgrade socket ready");
        let shared = Arc::new(Shared {
            sockets,
            phase: Mutex::new(Phase::Serving),
            closed: self.closed.clone(),
            owner: rustix::process::geteuid().as_raw(),
        });
        let (done_tx, mut done_rx) = mpsc::channel::<u32>(1);
        loop {
            tokio::select! {
                Some(pid) = done_rx.recv() => {
                    self.handed_over = true;
                    return pid;
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let (shared, done) = (shared.clone(), done_tx.clone());
                        // The exchange is a few small blocking reads and
                        // writes with timeouts; descriptors need recvmsg.
                        tokio::task::spawn_blocking(move || {
                            let answered = stream
                                .into_std()
                                .map_err(UpgradeError::from)
                                .and_then(|s| answer(s, &shared));
                            match answered {
                                Ok(Some(pid)) => {
                                    let _ = done.blocking_send(pid);
                                }
                                Ok(None) => {}
                                Err(e) => tracing::warn!(
                                    error = %e,
                                    "upgrade attempt failed; this weir keeps serving"
                                ),
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "upgrade socket accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
            }
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
        if self.handed_over {
            return;
        }
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.file);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// One connection to the control socket, on the running process's side.
/// `Some(pid)` when a successor took the sockets over.
fn answer(stream: UnixStream, shared: &Shared) -> Result<Option<u32>, UpgradeError> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
    stream.set_write_timeout(Some(EXCHANGE_TIMEOUT))?;
    let peer = match peer_pid(&stream, shared.owner) {
        Ok(pid) => pid,
        Err(e) => return refuse(&stream, e.to_string()),
    };
    match receive(&stream, &mut Vec::new())? {
        Message::Status => {
            let me = Message::Instance {
                pid: std::process::id(),
                version: VERSION.into(),
            };
            send(&stream, &me, &[])?;
            Ok(None)
        }
        Message::Hello { protocol, .. } if protocol != PROTOCOL => refuse(
            &stream,
            format!("protocol {protocol} is not supported (this weir speaks {PROTOCOL})"),
        ),
        Message::Hello { .. } => offer(&stream, shared, peer),
        other => refuse(&stream, format!("unexpected {} message", kind(&other))),
    }
}

/// Offers the sockets to `peer` and waits for it to serve; one takeover at
/// a time.
fn offer(stream: &UnixStream, shared: &Shared, peer: u32) -> Result<Option<u32>, UpgradeError> {
    {
        let mut phase = shared.phase.lock().unwrap_or_else(PoisonError::into_inner);
        match *phase {
            Phase::Serving => *phase = Phase::Offering,
            Phase::Offering => return refuse(stream, "another upgrade is in progress".into()),
            Phase::HandedOver => return refuse(stream, "this weir has already handed over".into()),
        }
    }
    let offered = offer_sockets(stream, shared, peer);
    if offered.is_err() {
        *shared.phase.lock().unwrap_or_else(PoisonError::into_inner) = Phase::Serving;
    }
    offered
}

fn offer_sockets(
    stream: &UnixStream,
    shared: &Shared,
    peer: u32,
) -> Result<Option<u32>, UpgradeError> {
    let infos = shared
        .sockets
        .iter()
        .map(|s| SocketInfo {
            role: s.role.clone(),
            configured: s.configured.clone(),
        })
        .collect();
    let fds: Vec<BorrowedFd<'_>> = shared.sockets.iter().map(|s| s.socket.as_fd()).collect();
    tracing::info!(
        successor = peer,
        sockets = fds.len(),
        "upgrade: handing the listening sockets to a new process"
    );
    let offer = Message::Sockets {
        pid: std::process::id(),
        version: VERSION.into(),
        sockets: infos,
    };
    send(stream, &offer, &fds)?;
    stream.set_read_timeout(Some(READY_TIMEOUT))?;
    match receive(stream, &mut Vec::new()) {
        Ok(Message::Ready) => {}
        Ok(other) => return refuse(stream, format!("unexpected {} message", kind(&other))),
        Err(e) => {
            return Err(UpgradeError::Protocol(format!(
                "the new process (pid {peer}) gave up before serving: {e}"
            )))
        }
    }
    if shared.closed.load(Ordering::Acquire) {
        return refuse(stream, "this weir is shutting down".into());
    }
    *shared.phase.lock().unwrap_or_else(PoisonError::into_inner) = Phase::HandedOver;
    // Committed: the successor serves. If it never reads the confirmation
    // it keeps serving all the same, so a failed write changes nothing.
    if let Err(e) = send(stream, &Message::Released, &[]) {
        tracing::warn!(error = %e, "could not confirm the handover to the new process");
    }
    Ok(Some(peer))
}

fn refuse(stream: &UnixStream, reason: String) -> Result<Option<u32>, UpgradeError> {
    let _ = send(
        stream,
        &Message::Refused {
            reason: reason.clone(),
        },
        &[],
    );
    Err(UpgradeError::Protocol(format!("refused: {reason}")))
}

// === impl Takeover ===

impl Takeover {
    /// Connects to the weir serving `path` and receives its listening
    /// sockets. The old process keeps serving; dropping the `Takeover`
    /// without [`complete`](Takeover::complete) abandons the upgrade.
    pub fn begin(path: &Path) -> Result<Takeover, UpgradeError> {
        let stream = connect(path)?;
        let hello = Message::Hello {
            protocol: PROTOCOL,
            pid: std::process::id(),
        };
        send(&stream, &hello, &[])?;
        let mut fds = Vec::new();
        let (old_pid, old_version, infos) = match receive(&stream, &mut fds)? {
            Message::Sockets {
                pid,
                version,
                sockets,
            } => (pid, version, sockets),
            Message::Refused { reason } => return Err(UpgradeError::Refused(reason)),
            other => return Err(unexpected(&other)),
        };
        if fds.len() != infos.len() {
            return Err(UpgradeError::Protocol(format!(
                "{} sockets announced, {} received",
                infos.len(),
                fds.len()
            )));
        }
        let mut sockets = Vec::with_capacity(fds.len());
        for (info, fd) in infos.into_iter().zip(fds) {
            let socket = TcpListener::from(fd);
            // Fails unless the descriptor really is an inet socket.
            let local = socket.local_addr()?;
            sockets.push(Inherited {
                role: Some(info.role),
                configured: Some(info.configured),
                local,
                socket,
            });
        }
        Ok(Takeover {
            stream,
            old_pid,
            old_version,
            listeners: InheritedListeners {
                origin: format!("weir pid {old_pid}"),
                sockets,
            },
        })
    }

    /// The process being replaced.
    pub fn old_pid(&self) -> u32 {
        self.old_pid
    }

    /// Its version.
    pub fn old_version(&self) -> &str {
        &self.old_version
    }

    /// The received sockets (the first call takes them all).
    pub fn take_listeners(&mut self) -> InheritedListeners {
        std::mem::take(&mut self.listeners)
    }

    /// Tells the old process that this one serves: it stops accepting and
    /// drains. `Err(Unconfirmed)` when `ready` went out but no confirmation
    /// came back: the old process may or may not still be accepting.
    pub fn complete(self) -> Result<(), UpgradeError> {
        send(&self.stream, &Message::Ready, &[])?;
        let unconfirmed = |reason: String| UpgradeError::Unconfirmed {
            pid: self.old_pid,
            reason,
        };
        match receive(&self.stream, &mut Vec::new()) {
            Ok(Message::Released) => Ok(()),
            Ok(Message::Refused { reason }) => Err(UpgradeError::Refused(reason)),
            Ok(other) => Err(unconfirmed(format!("unexpected {} message", kind(&other)))),
            Err(e) => Err(unconfirmed(e.to_string())),
        }
    }
}

// === the wire ===

/// Connects to the control socket, checking who serves it.
fn connect(path: &Path) -> Result<UnixStream, UpgradeError> {
    let stream = UnixStream::connect(path).map_err(|error| UpgradeError::NoInstance {
        path: path.to_owned(),
        error,
    })?;
    stream.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
    stream.set_write_timeout(Some(EXCHANGE_TIMEOUT))?;
    peer_pid(&stream, rustix::process::geteuid().as_raw())?;
    Ok(stream)
}

/// The pid of the process at the other end, which must run as `owner` or
/// as root: listening sockets go to no one else.
fn peer_pid(stream: &UnixStream, owner: u32) -> Result<u32, UpgradeError> {
    let cred = rustix::net::sockopt::socket_peercred(stream).map_err(std::io::Error::from)?;
    let uid = cred.uid.as_raw();
    if uid != owner && !cred.uid.is_root() {
        return Err(UpgradeError::Peer { uid });
    }
    Ok(cred.pid.as_raw_pid().unsigned_abs())
}

/// Writes one message, with `fds` attached to its first byte.
fn send(
    stream: &UnixStream,
    message: &Message,
    fds: &[BorrowedFd<'_>],
) -> Result<(), UpgradeError> {
    let mut bytes =
        serde_json::to_vec(message).map_err(|e| UpgradeError::Protocol(e.to_string()))?;
    bytes.push(b'\n');
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(UpgradeError::Protocol(
            "too many sockets for one message".into(),
        ));
    }
    let sent = rustix::net::sendmsg(
        stream,
        &[IoSlice::new(&bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .map_err(std::io::Error::from)?;
    let mut rest = stream;
    rest.write_all(&bytes[sent..])?;
    Ok(())
}

/// Reads one message, collecting the descriptors that came with it into
/// `fds`. Every read takes descriptors: a plain read would close them.
fn receive(stream: &UnixStream, fds: &mut Vec<OwnedFd>) -> Result<Message, UpgradeError> {
    let mut line = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    loop {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            stream,
            &mut [IoSliceMut::new(&mut chunk)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if got.flags.contains(ReturnFlags::CTRUNC) {
            return Err(UpgradeError::Protocol(
                "sockets were lost in transit (descriptor limit reached?)".into(),
            ));
        }
        if got.bytes == 0 {
            return Err(UpgradeError::Protocol("the connection closed".into()));
        }
        line.extend_from_slice(&chunk[..got.bytes]);
        if let Some(end) = line.iter().position(|&b| b == b'\n') {
            if end + 1 != line.len() {
                return Err(UpgradeError::Protocol("bytes after a message".into()));
            }
            return serde_json::from_slice(&line[..end])
                .map_err(|e| UpgradeError::Protocol(format!("bad message: {e}")));
        }
        if line.len() > MAX_MESSAGE {
            return Err(UpgradeError::Protocol("message too long".into()));
        }
    }
}

fn kind(message: &Message) -> &'static str {
    match message {
        Message::Hello { .. } => "hello",
        Message::Status => "status",
        Message::Sockets { .. } => "sockets",
        Message::Ready => "ready",
        Message::Released => "released",
        Message::Instance { .. } => "instance",
        Message::Refused { .. } => "refused",
    }
}

fn unexpected(message: &Message) -> UpgradeError {
    UpgradeError::Protocol(format!("unexpected {} message", kind(message)))
}
