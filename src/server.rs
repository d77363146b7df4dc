//! Assembles a running gateway: compiles the first snapshot, binds the
//! listeners and the admin listener (or serves on sockets inherited from the
//! weir it replaces or from systemd), runs the accept loops and background
//! tasks, and shuts down gracefully (stop accepting, let in-flight requests
//! finish within `runtime.shutdown_grace`), on a signal or once a successor
//! has taken the listening sockets over (`upgrade` speaks that protocol;
//! this module only decides when to serve, hand over and drain).
//!
//! A drain gives open WebSockets the same grace as requests; those still
//! open after it are closed with a close frame 1001 (going away) to both
//! sides.

mod accept;
pub(crate) use accept::first_bytes;
mod drain;
mod h2_guard;
mod idle;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weir_config::Config;

use crate::admin;
use crate::observe::{AccessLog, Metrics};
use crate::proxy::{RequestLimits, TrustedProxies, WEBSOCKET_CLOSE_TIMEOUT};
use crate::reload::Reloader;
use crate::snapshot::{BuildError, Snapshot};
use crate::state::State;
use crate::tls::ServerTls;
use crate::upgrade::{
    self, ControlSocket, InheritedListeners, ListeningSocket, Role, Takeover, UpgradeError,
};
use crate::upstream;
use accept::{accept_loop, ConnBuilders, OpenConnections};
use drain::Drain;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration could not be compiled.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A listener could not be bound.
    #[error("cannot listen on {address} ({name}): {source}")]
    Bind {
        /// Listener name.
        name: String,
        /// Address.
        address: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// The access log could not be opened.
    #[error("cannot open the access log: {0}")]
    AccessLog(std::io::Error),
    /// The async runtime could not be built.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// The upgrade control socket, a takeover or socket activation failed.
    #[error(transparent)]
    Upgrade(#[from] UpgradeError),
    /// A listener's TLS files could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The admin API's token file could not be read, or holds no token.
    #[error("admin.auth_token_file {path}: {reason}")]
    AdminToken {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Where a configuration came from, for reloads.
#[derive(Clone, Debug)]
pub struct Source {
    /// The file.
    pub path: std::path::PathBuf,
    /// Hash of its text (`reload::config_hash`).
    pub hash: String,
}

/// A running gateway.
pub struct Gateway {
    state: Arc<State>,
    listeners: Vec<(String, SocketAddr)>,
    admin: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    admin_stop: watch::Sender<bool>,
    admin_task: Option<JoinHandle<()>>,
    accept_tasks: Vec<JoinHandle<()>>,
    graceful: Arc<Drain>,
    grace: Duration,
    /// Duplicates of every listening socket, for a successor to take over.
    sockets: Arc<Vec<ListeningSocket>>,
}

impl Gateway {
    /// Compiles `config`, binds every listener and starts serving. Without
    /// a source file there is nothing to reload.
    pub async fn start(config: Config) -> Result<Gateway, ServerError> {
        Self::start_with(config, None).await
    }

    /// Like `start`, for a configuration read from `source`: the file is
    /// then watched and reloaded on change, on SIGHUP and on
    /// `POST /config/reload`.
    pub async fn start_with(
        config: Config,
        source: Option<Source>,
    ) -> Result<Gateway, ServerError> {
        Self::start_from(config, source, InheritedListeners::default()).await
    }

    /// Like `start_with`, serving on the `inherited` sockets that configured
    /// listeners claim (same name and address, see
    /// [`InheritedListeners::claim`]) and binding the others; inherited
    /// sockets no listener claims are closed.
    pub async fn start_from(
        config: Config,
        source: Option<Source>,
        mut inherited: InheritedListeners,
    ) -> Result<Gateway, ServerError> {
        let metrics = Arc::new(Metrics::new());
        let access_log = if config.access_log.enabled {
            Some(
                AccessLog::start(
                    config.access_log.path.as_deref(),
                    metrics.access_log_dropped(),
                )
                .map_err(ServerError::AccessLog)?,
            )
        } else {
            None
        };
        let grace = config.runtime.shutdown_grace.get();
        let listener_cfgs = config.listeners.clone();
        let admin_cfg = config.admin.clone();
        let limits = config.limits.clone();
        let trusted_proxies = config.trusted_proxies.clone();
        let mut snapshot = Snapshot::build(config, &metrics, None)?;
        if let Some(s) = &source {
            snapshot.hash = Arc::from(s.hash.as_str());
            metrics.set_config_hash("", &s.hash);
        }
        // Every socket before any task starts: when one cannot be bound, the
        // start fails before anything accepts (a failed takeover must not
        // take connections off the shared sockets only to drop them).
        let mut terminators = Vec::new();
        for (i, l) in listener_cfgs.iter().enumerate() {
            let tls = match &l.tls {
                Some(t) => Some(ServerTls::load(
                    &l.name,
                    &format!("listeners[{i}].tls"),
                    t,
                    &metrics,
                )?),
                None => None,
            };
            terminators.push(tls);
        }
        let mut sockets = Vec::new();
        let mut ready = Vec::new();
        for l in &listener_cfgs {
            let role = Role::Listener(l.name.clone());
            let (listener, addr, how) = listen(&mut inherited, &role, &l.address, &mut sockets)?;
            tracing::info!(listener = %l.name, address = %addr, socket = %how, "listening");
            ready.push((l, listener, addr));
        }
        let admin_token = match admin_cfg.as_ref().and_then(|a| a.auth_token_file.as_ref()) {
            Some(path) => {
                Some(
                    admin::read_token(path).map_err(|reason| ServerError::AdminToken {
                        path: path.clone(),
                        reason,
                    })?,
                )
            }
            None => None,
        };
        let admin_socket = match &admin_cfg {
            Some(a) => {
                let (listener, addr, how) =
                    listen(&mut inherited, &Role::Admin, &a.address, &mut sockets)?;
                tracing::info!(address = %addr, socket = %how, "admin listening");
                Some((listener, addr))
            }
            None => None,
        };
        inherited.close_unclaimed();
        upstream::start_background(&snapshot.upstreams);
        let state = Arc::new(State::new(snapshot, metrics, access_log));
        if let Some(s) = &source {
            let reloader = Reloader::new(&s.path, state.clone());
            let _ = state.reloader.set(reloader.clone());
            tokio::spawn(reloader.watch());
        }
        tokio::spawn(crate::proxy::maintain_policies(Arc::downgrade(&state)));

        let (stop, stop_rx) = watch::channel(false);
        let (admin_stop, admin_stop_rx) = watch::channel(false);
        let graceful = Arc::new(Drain::default());
        let mut listeners = Vec::new();
        let mut accept_tasks = Vec::new();
        let _ = state
            .tls
            .set(terminators.iter().flatten().cloned().collect());
        for tls in terminators.iter().flatten() {
            tokio::spawn(tls.clone().watch());
        }
        // One cap over every listener: it bounds the process's sockets.
        let open = Arc::new(OpenConnections::new(limits.max_connections));
        let request_limits = Arc::new(RequestLimits::of(&limits));
        let trusted = Arc::new(TrustedProxies::new(&trusted_proxies));
        for ((l, listener, addr), tls) in ready.into_iter().zip(terminators) {
            listeners.push((l.name.clone(), addr));
            let builder = Arc::new(ConnBuilders::new(
                &l.name,
                &l.protocols,
                tls,
                &limits,
                request_limits.clone(),
                trusted.clone(),
                open.clone(),
            ));
            accept_tasks.push(tokio::spawn(accept_loop(
                listener,
                builder,
                state.clone(),
                stop_rx.clone(),
                graceful.clone(),
            )));
        }
        let (admin, admin_task) = match admin_socket {
            Some((listener, addr)) => {
                // The admin API outlives the drain (probes must see /ready
                // turn 503, not a refused connection) and stops after it;
                // after a handoff it stops accepting at once
                // (`Gateway::hand_over`).
                let task = tokio::spawn(admin::serve(
                    listener,
                    state.clone(),
                    admin_token,
                    admin_stop_rx,
                ));
                (Some(addr), Some(task))
            }
            None => (None, None),
        };
        state.set_ready();
        Ok(Gateway {
            state,
            listeners,
            admin,
            stop,
            admin_stop,
            admin_task,
            accept_tasks,
            graceful,
            grace,
            sockets: Arc::new(sockets),
        })
    }

    /// The bound address of the listener named `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// Every listener's name and bound address, in config order.
    pub fn listener_addrs(&self) -> &[(String, SocketAddr)] {
        &self.listeners
    }

    /// The bound admin address, if there is an admin listener.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Shared state (for embedding and tests).
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Every listening socket (proxy listeners, then the admin listener),
    /// for a successor to take over.
    pub fn listening_sockets(&self) -> Arc<Vec<ListeningSocket>> {
        self.sockets.clone()
    }

    /// Graceful shutdown: stop accepting, ask every connection to finish its
    /// in-flight request, and wait up to the shutdown grace; WebSockets still
    /// open then are closed with 1001 (going away) to both sides. Returns
    /// true when every connection and WebSocket finished within the grace.
    pub async fn shutdown(self) -> bool {
        self.finish(false).await
    }

    /// Stops accepting because a successor now serves the same sockets, then
    /// drains like [`Gateway::shutdown`]. The admin listener stops accepting
    /// at once too (the successor answers on it), and `/ready` does not turn
    /// 503: the addresses stay served throughout.
    pub async fn hand_over(self) -> bool {
        self.finish(true).await
    }

    async fn finish(self, handed_over: bool) -> bool {
        // The duplicates would keep the sockets open once the accept loops
        // stop: new connections would queue unanswered instead of being
        // refused (or taken by the successor).
        drop(self.sockets);
        if handed_over {
            let _ = self.admin_stop.send(true);
        } else {
            self.state.set_draining();
        }
        let _ = self.stop.send(true);
        for t in self.accept_tasks {
            let _ = t.await;
        }
        let tunnels = &self.state.websockets;
        tracing::info!(
            grace = ?self.grace,
            connections = self.graceful.count(),
            websockets = tunnels.count(),
            "draining"
        );
        let deadline = tokio::time::Instant::now() + self.grace;
        // The accept loops have ended, so this is the last handle.
        let drained = match Arc::try_unwrap(self.graceful) {
            Ok(g) => tokio::time::timeout_at(deadline, g.run()).await.is_ok(),
            Err(_) => false,
        };
        if !drained {
            tracing::warn!("shutdown grace elapsed with requests still in flight");
        }
        // WebSockets have the same grace to end by themselves (a request
        // upgraded during the drain is counted by now).
        let finished = tokio::time::timeout_at(deadline, tunnels.closed())
            .await
            .is_ok();
        if !finished {
            tracing::info!(
                websockets = tunnels.count(),
                "shutdown grace elapsed: closing open WebSockets (1001 going away)"
            );
            tunnels.close_all();
            // Each tunnel bounds its own close; the margin covers scheduling.
            let bound = WEBSOCKET_CLOSE_TIMEOUT + Duration::from_millis(500);
            if tokio::time::timeout(bound, tunnels.closed()).await.is_err() {
                tracing::warn!(
                    websockets = tunnels.count(),
                    "WebSockets still open after their close"
                );
            }
        }
        let _ = self.admin_stop.send(true);
        // Admin requests in flight (a reload that started this handover)
        // get their answer before the process exits.
        if let Some(task) = self.admin_task {
            let _ = task.await;
        }
        drained && finished
    }
}

/// The socket for `role` at `address`: the inherited one it claims, or a
/// fresh bind. Returns it with the address it actually has (the port the OS
/// chose when the config says 0) and where it came from, and keeps a
/// duplicate in `sockets` for a successor.
fn listen(
    inherited: &mut InheritedListeners,
    role: &Role,
    address: &str,
    sockets: &mut Vec<ListeningSocket>,
) -> Result<(TcpListener, SocketAddr, String), ServerError> {
    let err = |source| ServerError::Bind {
        name: role.to_string(),
        address: address.to_owned(),
        source,
    };
    let (socket, how) = match inherited.claim(role, address) {
        Some(socket) => (socket, format!("inherited from {}", inherited.origin())),
        None => (bind(&role.to_string(), address)?, "bound".to_owned()),
    };
    socket.set_nonblocking(true).map_err(err)?;
    let duplicate = socket.try_clone().map_err(err)?;
    let listener = TcpListener::from_std(socket).map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    sockets.push(ListeningSocket {
        role: role.clone(),
        configured: address.to_owned(),
        socket: duplicate,
    });
    Ok((listener, bound, how))
}

/// Binds `address` (non-blocking).
fn bind(name: &str, address: &str) -> Result<std::net::TcpListener, ServerError> {
    let err = |source| ServerError::Bind {
        name: name.to_owned(),
        address: address.to_owned(),
        source,
    };
    let addr: SocketAddr = address
        .parse()
        .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(err)?;
    // Lets a restarted weir bind while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true).map_err(err)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(err)?;
    }
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(4096).map_err(err)?;
    Ok(socket.into())
}

/// How `weir run` can be upgraded in place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Upgrades {
    /// No control socket: the process cannot hand its sockets over.
    #[default]
    Off,
    /// Bind the listeners (or take systemd's) and serve the control socket
    /// at this path.
    Serve(PathBuf),
    /// Take the listening sockets over from the weir serving the control
    /// socket at this path, then serve that path in its place.
    TakeOver(PathBuf),
}

/// How `weir run` starts.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Worker threads; overrides `runtime.threads`.
    pub threads: Option<usize>,
    /// The upgrade control socket, and whether to take over from it.
    pub upgrades: Upgrades,
    /// How to start a successor, so that a reload changing what only a new
    /// process can apply (listeners, admin, runtime) upgrades in place.
    /// Used only while this process serves a control socket.
    pub successor: Option<crate::upgrade::Successor>,
}

/// Where the listening sockets come from, settled before the runtime starts.
enum Startup {
    /// Bound here (or passed by systemd); the control socket, if any.
    Fresh(Option<ControlSocket>, InheritedListeners),
    /// Received from a running weir; its control socket path.
    TakeOver(Takeover, PathBuf),
}

/// Runs a gateway until SIGTERM or SIGINT, then shuts down gracefully.
/// SIGHUP reloads the configuration file.
pub async fn run_until_signal(config: Config, source: Option<Source>) -> Result<(), ServerError> {
    let startup = Startup::Fresh(None, InheritedListeners::default());
    serve(config, source, startup, None).await
}

/// Builds the runtime (`threads` workers; 1 = a single-threaded runtime) and
/// runs the gateway on it until a shutdown signal.
pub fn run(
    config: Config,
    source: Option<Source>,
    threads: Option<usize>,
) -> Result<(), ServerError> {
    let options = RunOptions {
        threads,
        upgrades: Upgrades::Off,
        successor: None,
    };
    run_with(config, source, options)
}

/// Like [`run`], with a control socket for in-place upgrades and, with
/// [`Upgrades::TakeOver`], taking over from a running weir: it serves on
/// that process's sockets, then tells it to stop accepting and drain. A
/// failed takeover leaves the running weir serving as before. Without a
/// takeover, sockets passed by systemd socket activation (`LISTEN_FDS`) are
/// used instead of binding.
pub fn run_with(
    config: Config,
    source: Option<Source>,
    options: RunOptions,
) -> Result<(), ServerError> {
    // Settled before the runtime starts threads: socket activation clears
    // LISTEN_* from the environment, which is only sound single-threaded,
    // and a takeover that cannot start should fail before anything else.
    let startup = match options.upgrades {
        Upgrades::TakeOver(path) => {
            let takeover = Takeover::begin(&path)?;
            tracing::info!(
                old_pid = takeover.old_pid(),
                old_version = takeover.old_version(),
                "upgrade: received the listening sockets of the running weir"
            );
            Startup::TakeOver(takeover, path)
        }
        upgrades => {
            let control = match upgrades {
                Upgrades::Serve(path) => Some(ControlSocket::bind(&path)?),
                _ => None,
            };
            let inherited = InheritedListeners::from_systemd(&roles(&config))?;
            Startup::Fresh(control, inherited.unwrap_or_default())
        }
    };
    let threads = options
        .threads
        .or(config.runtime.threads)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .map_err(ServerError::Runtime)?;
    tracing::info!(
        threads,
        version = env!("CARGO_PKG_VERSION"),
        "starting weir"
    );
    let result = runtime.block_on(serve(config, source, startup, options.successor));
    // Connections still open after the grace are dropped with the runtime.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

/// Every socket role the configuration asks for, listeners first.
fn roles(config: &Config) -> Vec<Role> {
    let mut roles: Vec<Role> = config
        .listeners
        .iter()
        .map(|l| Role::Listener(l.name.clone()))
        .collect();
    if config.admin.is_some() {
        roles.push(Role::Admin);
    }
    roles
}

async fn serve(
    config: Config,
    source: Option<Source>,
    startup: Startup,
    successor: Option<crate::upgrade::Successor>,
) -> Result<(), ServerError> {
    // Installed before anything is served, so that a served request proves a
    // signal would be handled.
    let signals = Signals::install();
    match startup {
        Startup::Fresh(control, inherited) => {
            let gateway = Gateway::start_from(config, source, inherited).await?;
            upgrade::notify("READY=1");
            supervise(gateway, control, successor, signals).await
        }
        Startup::TakeOver(mut takeover, path) => {
            // A failure here drops the takeover: the old process sees the
            // connection close and serves on.
            let started = Gateway::start_from(config, source, takeover.take_listeners()).await;
            let gateway = started.inspect_err(|e| {
                tracing::error!(error = %e, "upgrade failed; the old process keeps serving");
            })?;
            let old = takeover.old_pid();
            // Before the old process may exit: systemd reads notifications
            // ahead of child exits, so it never sees its main process gone.
            upgrade::notify(&format!("MAINPID={}\nREADY=1", std::process::id()));
            let completed = tokio::task::spawn_blocking(move || takeover.complete())
                .await
                .unwrap_or_else(|e| Err(UpgradeError::Protocol(e.to_string())));
            match completed {
                Ok(()) => tracing::info!(
                    old_pid = old,
                    "upgrade complete: the old process stops accepting and drains"
                ),
                Err(e @ UpgradeError::Unconfirmed { .. }) => tracing::warn!(
                    error = %e,
                    "serving anyway: the old process may still be accepting as well"
                ),
                Err(e) => {
                    upgrade::notify(&format!("MAINPID={old}"));
                    tracing::error!(error = %e, "upgrade failed; the old process keeps serving");
                    gateway.shutdown().await;
                    return Err(e.into());
                }
            }
            let control = match ControlSocket::bind_replacing(&path) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!(error = %e, "serving, but this process cannot be upgraded in place");
                    None
                }
            };
            supervise(gateway, control, successor, signals).await
        }
    }
}

/// Serves until a shutdown signal (drain, then return) or until a successor
/// has taken the sockets over through `control` (hand over, drain, return).
async fn supervise(
    gateway: Gateway,
    control: Option<ControlSocket>,
    successor: Option<crate::upgrade::Successor>,
    mut signals: Signals,
) -> Result<(), ServerError> {
    if let (Some(_), Some(successor), Some(reloader)) =
        (&control, successor, gateway.state().reloader.get())
    {
        reloader.enable_upgrades(successor);
    }
    let sockets = gateway.listening_sockets();
    let mut handover = Box::pin(async move {
        match control {
            Some(c) => c.serve(sockets).await,
            None => std::future::pending().await,
        }
    });
    let successor = tokio::select! {
        () = signals.wait(gateway.state()) => None,
        pid = &mut handover => Some(pid),
    };
    // Stops answering on the control socket and releases its copies of the
    // sockets before the drain (see `Gateway::finish`).
    drop(handover);
    match successor {
        None => {
            tracing::info!("shutdown signal received");
            upgrade::notify("STOPPING=1");
            gateway.shutdown().await;
        }
        Some(pid) => {
            tracing::info!(
                successor = pid,
                "handed the listening sockets over; draining"
            );
            let reloader = gateway.state().reloader.get().cloned();
            gateway.hand_over().await;
            // A reload that started this handover reports it before exit.
            if let Some(r) = reloader {
                r.settle().await;
            }
        }
    }
    Ok(())
}

/// The signals `weir run` handles.
struct Signals {
    term: Option<Signal>,
    int: Option<Signal>,
    hup: Option<Signal>,
}

impl Signals {
    fn install() -> Signals {
        let term = signal(SignalKind::terminate())
            .inspect_err(|e| tracing::error!(error = %e, "cannot install SIGTERM handler"))
            .ok();
        Signals {
            term,
            int: signal(SignalKind::interrupt()).ok(),
            // SIGHUP reloads (its default action would kill the process).
            hup: signal(SignalKind::hangup()).ok(),
        }
    }

    /// Returns at SIGTERM or SIGINT; reloads the configuration at SIGHUP.
    async fn wait(&mut self, state: &Arc<State>) {
        let Some(term) = self.term.as_mut() else {
            // Without a SIGTERM handler, stopping would not be graceful:
            // leave it to the default action.
            return std::future::pending().await;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return,
                Some(()) = recv(self.int.as_mut()) => return,
                Some(()) = recv(self.hup.as_mut()) => {
                    for tls in state.tls.get().into_iter().flatten() {
                        let _ = tls.reload("signal");
                    }
                    match state.reloader.get() {
                        Some(r) => {
                            tracing::info!("SIGHUP received: reloading the configuration");
                            let r = r.clone();
                            tokio::spawn(async move { r.reload("signal").await });
                        }
                        None => tracing::warn!("SIGHUP received, but weir was not started from a file: nothing to reload"),
                    }
                }
            }
        }
    }
}

/// The next delivery of `signal`, or never without a handler.
async fn recv(signal: Option<&mut Signal>) -> Option<()> {
    match signal {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}
