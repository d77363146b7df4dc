//! Zero-downtime binary upgrade, and listening sockets a process inherits
//! instead of binding.
//!
//! Every `weir run` serves a Unix control socket. `weir run --upgrade`
//! connects to it and receives every listening socket of the running process
//! (the proxy listeners and the admin listener) as descriptors
//! (`SCM_RIGHTS`), starts serving on them, then says `ready`: the old process
//! stops accepting, drains and exits, and the new one takes the control
//! socket path over. The sockets stay open throughout, so no connection is
//! refused. Sockets passed by systemd socket activation (`LISTEN_FDS`) arrive
//! through the same [`InheritedListeners`].
//!
//! Owns: the control socket (path, permissions, peer check, protocol; in
//! `control`), starting a successor (`successor`), how inherited sockets are matched to configured listeners,
//! and `sd_notify`.
//! Must not touch: binding, accept loops and draining (`server`), the
//! configuration (`reload`). It never binds a TCP socket and holds no
//! `unsafe`: descriptors cross the socket through `rustix`, and systemd's
//! through `listenfd`.
//!
//! Protocol: one JSON object per line, strictly request then answer.
//! Successor `hello` → running `sockets` (the descriptors ride on this
//! message, in the order listed) → successor `ready` → running `released`.
//! `status` → `instance` says who serves the socket. A second takeover while
//! one is in progress, or anything unexpected, gets `refused`.

use std::net::{SocketAddr, TcpListener};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod control;
mod successor;
#[cfg(test)]
mod tests;

pub use control::{query, ControlSocket, Takeover};
pub use successor::{Successor, TakenOver};

/// The `LISTEN_FDNAMES` name (systemd's `FileDescriptorName=`) that
/// marks the admin listener's socket, unless a proxy listener has that name.
pub const ADMIN_FD_NAME: &str = "admin";

/// Why a handoff, the control socket or socket activation failed.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// Nothing answers on the control socket.
    #[error("no running weir to upgrade: cannot connect to the upgrade socket {path}: {error}")]
    NoInstance {
        /// The control socket path.
        path: PathBuf,
        /// Why connecting failed.
        error: std::io::Error,
    },
    /// Another weir already serves the control socket.
    #[error(
        "another weir already serves the upgrade socket {path}: replace it with \
         `weir run --upgrade`, or give this one its own --upgrade-socket"
    )]
    InstanceRunning {
        /// The control socket path.
        path: PathBuf,
    },
    /// The control socket could not be created.
    #[error("cannot create the upgrade socket {path}: {error}")]
    Bind {
        /// The control socket path.
        path: PathBuf,
        /// The socket or file error.
        error: std::io::Error,
    },
    /// The process at the other end runs as another user.
    #[error("the process on the upgrade socket runs as uid {uid}, neither this user nor root")]
    Peer {
        /// Its effective user id.
        uid: u32,
    },
    /// The running weir declined the takeover.
    #[error("the running weir refused the upgrade: {0}")]
    Refused(String),
    /// The other side broke the protocol or went away.
    #[error("upgrade handshake failed: {0}")]
    Protocol(String),
    /// The control connection failed.
    #[error("upgrade handshake failed: {0}")]
    Io(std::io::Error),
    /// `ready` was delivered, but the old process did not confirm it.
    #[error("the old weir (pid {pid}) did not confirm the handover: {reason}")]
    Unconfirmed {
        /// The old process.
        pid: u32,
        /// What happened instead.
        reason: String,
    },
    /// The successor could not be started.
    #[error("cannot start the new weir ({exe}): {error}")]
    Start {
        /// The binary.
        exe: PathBuf,
        /// Why it could not be run.
        error: std::io::Error,
    },
    /// The successor exited before it took over.
    #[error("the new weir exited ({status}) before taking over; weir pid {old_pid} keeps serving")]
    SuccessorExited {
        /// Its exit status.
        status: String,
        /// The process that keeps serving.
        old_pid: u32,
    },
    /// The successor did not take over in time.
    #[error("the new weir (pid {pid}) did not take over within {timeout:?}; it is left running")]
    SuccessorTimeout {
        /// The new process.
        pid: u32,
        /// How long it was given.
        timeout: std::time::Duration,
    },
    /// The sockets systemd passed cannot be used.
    #[error("socket activation: {0}")]
    Activation(String),
}

/// What a listening socket serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The proxy listener of this name.
    Listener(String),
    /// The admin API.
    Admin,
}

/// One listening socket of a running gateway, as offered to a successor.
#[derive(Debug)]
pub struct ListeningSocket {
    /// What it serves.
    pub role: Role,
    /// Its address as the configuration wrote it (`127.0.0.1:0` stays so).
    pub configured: String,
    /// A duplicate of the socket the accept loop owns.
    pub socket: TcpListener,
}

/// Who serves a control socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// Its process id.
    pub pid: u32,
    /// Its version.
    pub version: String,
}

/// Listening sockets a process starts with instead of binding: taken over
/// from the weir it replaces, or passed by systemd. Each configured
/// listener [claims](InheritedListeners::claim) its socket; the rest are
/// closed by [`InheritedListeners::close_unclaimed`].
#[derive(Debug, Default)]
pub struct InheritedListeners {
    origin: String,
    sockets: Vec<Inherited>,
}

#[derive(Debug)]
struct Inherited {
    role: Option<Role>,
    /// The configured address it was bound for; `None` (systemd): any.
    configured: Option<String>,
    local: SocketAddr,
    socket: TcpListener,
}

/// The control socket of the weir serving `config` when no
/// `--upgrade-socket` is given: `weir-<hash of the canonical config
/// path>.sock` in `$XDG_RUNTIME_DIR`, or in `/tmp` without one. The old and
/// the new process find each other as long as both see the same directory.
pub fn default_socket_path(config: &Path) -> PathBuf {
    let canonical = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_owned());
    let hash = crate::reload::config_hash(&canonical.to_string_lossy());
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute() && d.is_dir())
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    dir.join(format!("weir-{hash}.sock"))
}

/// Sends `state` (`READY=1`, `MAINPID=…`) to the service manager, as
/// `sd_notify(3)` does, when `NOTIFY_SOCKET` is set. Failures are logged,
/// never fatal: weir runs the same without a service manager.
pub fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent =
        UnixDatagram::unbound().and_then(|socket| match target.as_bytes().strip_prefix(b"@") {
            Some(name) => {
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr)
            }
            None => socket.send_to(state.as_bytes(), Path::new(&target)),
        });
    if let Err(e) = sent {
        tracing::warn!(error = %e, state, "cannot notify the service manager");
    }
}

// The message already says what the error is: no `#[from]`, whose source
// would print it twice in a `{:#}` chain.
impl From<std::io::Error> for UpgradeError {
    fn from(e: std::io::Error) -> Self {
        UpgradeError::Io(e)
    }
}

// === impl Role ===

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Listener(name) => f.write_str(name),
            Role::Admin => f.write_str("admin"),
        }
    }
}

// === impl InheritedListeners ===

impl InheritedListeners {
    /// The sockets systemd passed to this process (`LISTEN_PID` is this
    /// process, `LISTEN_FDS` of them from descriptor 3), matched to `roles`
    /// by `LISTEN_FDNAMES` when those name them (`admin` for the admin
    /// listener) and by order otherwise. `Ok(None)` when not socket
    /// activated. Reads and clears the `LISTEN_*` variables, so it must run
    /// before any other thread starts.
    pub fn from_systemd(roles: &[Role]) -> Result<Option<InheritedListeners>, UpgradeError> {
        let for_us = std::env::var("LISTEN_PID")
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            == Some(std::process::id());
        if !for_us {
            return Ok(None);
        }
        let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
            .map(|n| n.split(':').map(str::to_owned).collect())
            .unwrap_or_default();
        let mut fds = listenfd::ListenFd::from_env();
        let count = fds.len();
        if count == 0 {
            return Ok(None);
        }
        let by_name = names.len() == count && names.iter().any(|n| role_named(roles, n).is_some());
        let mut sockets = Vec::with_capacity(count);
        for i in 0..count {
            let what = match names.get(i) {
                Some(name) => format!("descriptor {} ({name})", 3 + i),
                None => format!("descriptor {}", 3 + i),
            };
            let socket = fds
                .take_tcp_listener(i)
                .map_err(|e| UpgradeError::Activation(format!("{what}: {e}")))?
                .ok_or_else(|| UpgradeError::Activation(format!("{what} is missing")))?;
            let local = socket
                .local_addr()
                .map_err(|e| UpgradeError::Activation(format!("{what}: {e}")))?;
            let role = if by_name {
                names.get(i).and_then(|n| role_named(roles, n))
            } else {
                roles.get(i).cloned()
            };
            sockets.push(Inherited {
                role,
                configured: None,
                local,
                socket,
            });
        }
        Ok(Some(InheritedListeners {
            origin: "systemd".into(),
            sockets,
        }))
    }

    /// Where the sockets came from, for logs (`weir pid 4242`, `systemd`).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// True when no socket is left to claim.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Takes the socket for the listener `role` configured at `configured`:
    /// the one inherited for the same role and configured address (systemd's
    /// for the role, whatever its address), else one whose bound address is
    /// exactly `configured` (a renamed listener; never for port 0). `None`
    /// when the listener is new or its address changed: it binds afresh.
    pub fn claim(&mut self, role: &Role, configured: &str) -> Option<TcpListener> {
        let same_role = |s: &Inherited| {
            s.role.as_ref() == Some(role) && s.configured.as_deref().is_none_or(|c| c == configured)
        };
        let wanted = configured
            .parse::<SocketAddr>()
            .ok()
            .filter(|a| a.port() != 0);
        let same_address = |s: &Inherited| Some(s.local) == wanted;
        let i = self
            .sockets
            .iter()
            .position(same_role)
            .or_else(|| self.sockets.iter().position(same_address))?;
        Some(self.sockets.remove(i).socket)
    }

    /// Closes every socket no listener claimed (a listener the new
    /// configuration dropped), logging each.
    pub fn close_unclaimed(self) {
        for s in self.sockets {
            let role = s
                .role
                .map_or_else(|| "unnamed".to_owned(), |r| r.to_string());
            tracing::info!(
                socket = %role,
                address = %s.local,
                from = %self.origin,
                "closing an inherited socket no listener uses"
            );
        }
    }
}

fn role_named(roles: &[Role], name: &str) -> Option<Role> {
    roles
        .iter()
        .find(|r| matches!(r, Role::Listener(n) if n == name))
        .or_else(|| {
            roles
                .iter()
                .find(|r| **r == Role::Admin && name == ADMIN_FD_NAME)
        })
        .cloned()
}
