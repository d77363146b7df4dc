//! The command line: `weir run`, `weir upgrade`, `weir check`, `weir
//! version`. The only module that uses `anyhow`; everything below it returns
//! typed errors.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use weir_config::{Config, ListenerProtocol};

use crate::server::{RunOptions, Upgrades};
use crate::upgrade;

/// weir: an API gateway and traffic-governance proxy.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about, long_about = None)]
pub struct Cli {
    /// Log level or filter (e.g. `info`, `debug`, `weir=debug,hyper=info`).
    /// Overrides RUST_LOG. Logs go to stderr; the access log goes to stdout.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway until SIGTERM/SIGINT.
    Run {
        /// Configuration file (YAML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Worker threads; overrides runtime.threads.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
        threads: Option<u16>,
        /// Take over from the weir serving the upgrade socket: serve on its
        /// listening sockets, then let it drain and exit. Fails, leaving it
        /// serving, when there is none or the handoff fails.
        #[arg(long)]
        upgrade: bool,
        /// The upgrade control socket this process serves (and, with
        /// --upgrade, takes over from). Default: weir-<hash of the config
        /// path>.sock in $XDG_RUNTIME_DIR, else in /tmp.
        #[arg(long, value_name = "PATH")]
        upgrade_socket: Option<PathBuf>,
    },
    /// Replace the running weir with this binary, dropping no connection.
    ///
    /// Starts `weir run --upgrade` in the background and returns once it has
    /// taken over (for scripts and systemd's ExecReload).
    Upgrade {
        /// Configuration file (YAML) for the new process.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Worker threads of the new process; overrides runtime.threads.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
        threads: Option<u16>,
        /// The upgrade control socket of the running weir (default as for `run`).
        #[arg(long, value_name = "PATH")]
        upgrade_socket: Option<PathBuf>,
        /// Seconds to wait for the new process to take over.
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        timeout: u64,
    },
    /// Validate a configuration file and print a summary. Exit 0 when valid,
    /// 1 when not (every error is listed).
    Check {
        /// Configuration file (YAML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print the version.
    Version,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_level.as_deref());
    let log_level = cli.log_level;
    match cli.command {
        Command::Version => {
            println!("weir {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                print!("{}", summary(&config, &c));
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprint!("{errors}");
                ExitCode::from(1)
            }
        },
        Command::Run {
            config,
            threads,
            upgrade,
            upgrade_socket,
        } => {
            let socket = upgrade_socket.unwrap_or_else(|| upgrade::default_socket_path(&config));
            // A reload that only a new process can apply starts this.
            let successor = current_exe().ok().map(|exe| upgrade::Successor {
                exe,
                config: config.clone(),
                socket: socket.clone(),
                threads,
                log_level,
            });
            let options = RunOptions {
                threads: threads.map(usize::from),
                upgrades: if upgrade {
                    Upgrades::TakeOver(socket)
                } else {
                    Upgrades::Serve(socket)
                },
                successor,
            };
            exit_code(run(&config, options))
        }
        Command::Upgrade {
            config,
            threads,
            upgrade_socket,
            timeout,
        } => {
            let socket = upgrade_socket.unwrap_or_else(|| upgrade::default_socket_path(&config));
            let upgrade = Upgrade {
                config,
                threads,
                socket,
                log_level,
                timeout: Duration::from_secs(timeout),
            };
            exit_code(upgrade.run())
        }
    }
}

fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Reads and validates the configuration file, with its reload source.
fn load(path: &Path) -> anyhow::Result<(Config, crate::server::Source)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    let config = Config::from_yaml_in(&text, &path.display().to_string())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let source = crate::server::Source {
        path: path.to_owned(),
        hash: crate::reload::config_hash(&text),
    };
    Ok((config, source))
}

fn run(path: &Path, options: RunOptions) -> anyhow::Result<()> {
    let (config, source) = load(path)?;
    crate::server::run_with(config, Some(source), options)?;
    Ok(())
}

/// `weir upgrade`: what it needs to start the new process.
struct Upgrade {
    config: PathBuf,
    threads: Option<u16>,
    socket: PathBuf,
    log_level: Option<String>,
    timeout: Duration,
}

impl Upgrade {
    /// Starts `weir run --upgrade` detached (it outlives this command, as
    /// systemd's ExecReload needs) and waits until it serves the upgrade
    /// socket, or has exited, or the timeout passes.
    fn run(self) -> anyhow::Result<()> {
        // A bad file fails here, before anything is started.
        load(&self.config)?;
        let successor = upgrade::Successor {
            exe: current_exe()?,
            config: self.config,
            socket: self.socket,
            threads: self.threads,
            log_level: self.log_level,
        };
        let done = successor.start(true, self.timeout)?;
        println!(
            "weir pid {} ({}) took over from pid {} ({}), which drains and exits",
            done.pid,
            env!("CARGO_PKG_VERSION"),
            done.old.pid,
            done.old.version
        );
        Ok(())
    }
}

fn current_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().map_err(|e| anyhow::anyhow!("cannot find the weir binary: {e}"))
}

fn init_logging(level: Option<&str>) {
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).unwrap_or_else(|_| EnvFilter::new("info")),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// One-screen summary of a valid configuration.
pub fn summary(path: &Path, c: &Config) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "{}: valid", path.display());
    let _ = writeln!(s, "listeners ({}):", c.listeners.len());
    for l in &c.listeners {
        let protos: Vec<&str> = l
            .protocols
            .iter()
            .map(|p| match p {
                ListenerProtocol::Http1 => "http1",
                ListenerProtocol::H2c => "h2c",
            })
            .collect();
        let protos = match &l.tls {
            Some(tls) => {
                let alpn: Vec<String> = tls
                    .alpn
                    .iter()
                    .map(|p| String::from_utf8_lossy(p.id()).into_owned())
                    .collect();
                let mtls = match tls.client_auth.as_ref().map(|a| a.mode) {
                    Some(weir_config::ClientAuthMode::Require) => " mtls",
                    Some(weir_config::ClientAuthMode::Optional) => " mtls-optional",
                    None => "",
                };
                format!("tls({}){mtls}", alpn.join(","))
            }
            None => protos.join(","),
        };
        let _ = writeln!(s, "  {:<16} {:<24} {}", l.name, l.address, protos);
    }
    if let Some(a) = &c.admin {
        let _ = writeln!(s, "admin: {}", a.address);
    }
    let _ = writeln!(s, "routes ({}):", c.routes.len());
    for r in &c.routes {
        let m = &r.matches;
        let mut cond = Vec::new();
        if let Some(h) = &m.host {
            cond.push(format!("host={h}"));
        }
        if let Some(p) = &m.path {
            cond.push(format!("path={p}"));
        }
        if let Some(p) = &m.path_prefix {
            cond.push(format!("prefix={p}"));
        }
        if let Some(p) = &m.path_regex {
            cond.push(format!("regex={p}"));
        }
        if let Some(g) = &m.grpc {
            match &g.method {
                Some(method) => cond.push(format!("grpc={}/{method}", g.service)),
                None => cond.push(format!("grpc={}/*", g.service)),
            }
        }
        if let Some(ms) = &m.methods {
            cond.push(format!("methods={}", ms.join(",")));
        }
        if !m.headers.is_empty() {
            cond.push(format!("headers={}", m.headers.len()));
        }
        if !m.query.is_empty() {
            cond.push(format!("query={}", m.query.len()));
        }
        if let Some(cc) = &m.client_cert {
            let who = cc.san.as_deref().or(cc.subject.as_deref()).unwrap_or("?");
            cond.push(format!("client_cert={who}"));
        }
        let mut target = match (&r.upstream, &r.upstreams, &r.direct_response) {
            (Some(u), _, _) => format!("-> {u}"),
            (None, Some(split), _) => {
                let sides: Vec<String> = split
                    .iter()
                    .map(|s| format!("{} ({})", s.name, s.weight))
                    .collect();
                format!("-> {}", sides.join(", "))
            }
            (None, None, Some(d)) => format!("-> direct {}", d.status),
            (None, None, None) => "-> ?".into(),
        };
        let policies: Vec<&str> = [
            ("retry", r.retry.is_some()),
            ("rate_limit", r.rate_limit.is_some()),
            ("fault", r.fault.is_some()),
            ("mirror", r.mirror.is_some()),
            ("grpc_web", r.grpc_web),
            ("cors", r.cors.is_some()),
        ]
        .iter()
        .filter(|(_, on)| *on)
        .map(|(name, _)| *name)
        .collect();
        if !policies.is_empty() {
            target.push_str(&format!(" [{}]", policies.join(", ")));
        }
        let cond = if cond.is_empty() {
            "any".to_owned()
        } else {
            cond.join(" ")
        };
        let _ = writeln!(s, "  {:<16} {:<40} {}", r.name, cond, target);
    }
    let _ = writeln!(s, "upstreams ({}):", c.upstreams.len());
    for u in &c.upstreams {
        let targets: Vec<String> = u
            .targets
            .iter()
            .map(|t| format!("{} (w{})", t.address, t.weight))
            .collect();
        let policies: Vec<&str> = [
            ("health_check", u.health_check.is_some()),
            ("outlier_detection", u.outlier_detection.is_some()),
            ("circuit_breaker", u.circuit_breaker.is_some()),
        ]
        .iter()
        .filter(|(_, on)| *on)
        .map(|(name, _)| *name)
        .collect();
        let policies = if policies.is_empty() {
            String::new()
        } else {
            format!(" [{}]", policies.join(", "))
        };
        let _ = writeln!(
            s,
            "  {:<16} {} {} {}{}",
            u.name,
            u.load_balancing,
            u.protocol,
            targets.join(", "),
            policies
        );
    }
    s
}
