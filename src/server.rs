//! Assembles a running gateway: compiles the first snapshot, binds the
//! listeners and the admin listener, runs the accept loops and background
//! tasks, and shuts down gracefully (stop accepting, let in-flight requests
//! finish within `runtime.shutdown_grace`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weir_config::{Config, ListenerProtocol};

use crate::admin;
use crate::observe::{AccessLog, Metrics};
use crate::proxy::{self, ConnCtx};
use crate::reload::Reloader;
use crate::snapshot::{BuildError, Snapshot};
use crate::state::State;
use crate::upstream;

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
    accept_tasks: Vec<JoinHandle<()>>,
    graceful: Arc<GracefulShutdown>,
    grace: Duration,
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
        let mut snapshot = Snapshot::build(config, &metrics, None)?;
        if let Some(s) = &source {
            snapshot.hash = Arc::from(s.hash.as_str());
            metrics.set_config_hash("", &s.hash);
        }
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
        let graceful = Arc::new(GracefulShutdown::new());
        let mut listeners = Vec::new();
        let mut accept_tasks = Vec::new();
        for l in &listener_cfgs {
            let (listener, addr) = bind(&l.name, &l.address)?;
            tracing::info!(listener = %l.name, address = %addr, "listening");
            listeners.push((l.name.clone(), addr));
            let builder = Arc::new(ConnBuilders::new(&l.protocols));
            accept_tasks.push(tokio::spawn(accept_loop(
                listener,
                builder,
                state.clone(),
                stop_rx.clone(),
                graceful.clone(),
            )));
        }
        let admin = match admin_cfg {
            Some(a) => {
                let (listener, addr) = bind("admin", &a.address)?;
                tracing::info!(address = %addr, "admin listening");
                // The admin API outlives the drain (probes must see /ready
                // turn 503, not a refused connection) and stops after it.
                tokio::spawn(admin::serve(listener, state.clone(), admin_stop_rx.clone()));
                Some(addr)
            }
            None => None,
        };
        state.set_ready();
        Ok(Gateway {
            state,
            listeners,
            admin,
            stop,
            admin_stop,
            accept_tasks,
            graceful,
            grace,
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

    /// Graceful shutdown: stop accepting, ask every connection to finish its
    /// in-flight request, and wait up to the shutdown grace. Returns true when
    /// every connection finished in time.
    pub async fn shutdown(self) -> bool {
        self.state.set_draining();
        let _ = self.stop.send(true);
        for t in self.accept_tasks {
            let _ = t.await;
        }
        tracing::info!(grace = ?self.grace, connections = self.graceful.count(), "draining");
        // The accept loops have ended, so this is the last handle.
        let drained = match Arc::try_unwrap(self.graceful) {
            Ok(g) => tokio::time::timeout(self.grace, g.shutdown()).await.is_ok(),
            Err(_) => false,
        };
        if !drained {
            tracing::warn!("shutdown grace elapsed with requests still in flight");
        }
        let _ = self.admin_stop.send(true);
        drained
    }
}

/// Binds `address` and returns the listener with the address it actually got
/// (the port the OS chose when the config says 0).
fn bind(name: &str, address: &str) -> Result<(TcpListener, SocketAddr), ServerError> {
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
    let listener = TcpListener::from_std(socket.into()).map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    Ok((listener, bound))
}

/// How long a new connection may take to show which HTTP version it speaks.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(15);
/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The connection builders of one listener: one per protocol it speaks.
struct ConnBuilders {
    h1: Option<http1::Builder>,
    h2: Option<http2::Builder<TokioExecutor>>,
}

impl ConnBuilders {
    fn new(protocols: &[ListenerProtocol]) -> Self {
        let h1 = protocols.contains(&ListenerProtocol::Http1).then(|| {
            let mut b = http1::Builder::new();
            b.writev(false);
            b.timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(15));
            b
        });
        let h2 = protocols.contains(&ListenerProtocol::H2c).then(|| {
            let mut b = http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new());
            b
        });
        ConnBuilders { h1, h2 }
    }
}

/// Which protocol a connection speaks, from its first bytes.
enum Sniffed {
    Http1,
    Http2,
    Gone,
}

/// Peeks (without consuming) until the bytes either diverge from the HTTP/2
/// preface (HTTP/1.x: almost always at the first byte) or complete it. Doing
/// this once per connection lets both protocols run on the plain socket,
/// with no rewind wrapper on every read.
async fn sniff(stream: &TcpStream) -> Sniffed {
    let mut buf = [0u8; 24];
    loop {
        let n = match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return Sniffed::Gone,
            Ok(n) => n,
        };
        if buf[..n] != H2_PREFACE[..n] {
            return Sniffed::Http1;
        }
        if n == H2_PREFACE.len() {
            return Sniffed::Http2;
        }
        // A preface split across packets: peek again shortly.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    builders: Arc<ConnBuilders>,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
    graceful: Arc<GracefulShutdown>,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                let task = serve_connection(
                    stream,
                    peer,
                    builders.clone(),
                    state.clone(),
                    graceful.watcher(),
                );
                tokio::spawn(task);
            }
            Err(e) => {
                // Typically EMFILE/ENFILE: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    builders: Arc<ConnBuilders>,
    state: Arc<State>,
    watcher: Watcher,
) {
    let _ = stream.set_nodelay(true);
    let _guard = state.metrics.downstream_connection();
    let protocol = match (&builders.h1, &builders.h2) {
        (Some(_), None) => Sniffed::Http1,
        (None, Some(_)) => Sniffed::Http2,
        _ => tokio::time::timeout(SNIFF_TIMEOUT, sniff(&stream))
            .await
            .unwrap_or(Sniffed::Gone),
    };
    let ctx = Arc::new(ConnCtx::new(state, peer));
    let service = service_fn(move |req| proxy::handle(ctx.clone(), req));
    let io = TokioIo::new(stream);
    let result = match (protocol, &builders.h1, &builders.h2) {
        (Sniffed::Http1, Some(b), _) => watcher.watch(b.serve_connection(io, service)).await,
        (Sniffed::Http2, _, Some(b)) => watcher.watch(b.serve_connection(io, service)).await,
        _ => Ok(()),
    };
    if let Err(e) = result {
        tracing::debug!(client = %peer, error = %e, "client connection ended with an error");
    }
}

/// Runs a gateway until SIGTERM or SIGINT, then shuts down gracefully.
/// SIGHUP reloads the configuration file.
pub async fn run_until_signal(config: Config, source: Option<Source>) -> Result<(), ServerError> {
    let gateway = Gateway::start_with(config, source).await?;
    wait_for_signal(gateway.state()).await;
    tracing::info!("shutdown signal received");
    gateway.shutdown().await;
    Ok(())
}

async fn wait_for_signal(state: &Arc<State>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install SIGTERM handler");
            std::future::pending::<()>().await;
            return;
        }
    };
    // SIGHUP reloads (its default action would kill the process).
    let mut hup = signal(SignalKind::hangup()).ok();
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = tokio::signal::ctrl_c() => return,
            Some(()) = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => {
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

/// Builds the runtime (`threads` workers; 1 = a single-threaded runtime) and
/// runs the gateway on it until a shutdown signal.
pub fn run(
    config: Config,
    source: Option<Source>,
    threads: Option<usize>,
) -> Result<(), ServerError> {
    let threads = threads
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
    let result = runtime.block_on(run_until_signal(config, source));
    // Connections still open after the grace are dropped with the runtime.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}
