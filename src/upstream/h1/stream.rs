//! The byte stream under an HTTP/1.1 connection: one concrete enum, so the
//! hot path reads and writes without a trait object.

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A connection's transport.
#[derive(Debug)]
pub enum Stream {
    /// Cleartext TCP.
    Tcp(TcpStream),
    /// TLS over TCP (boxed: the TLS state is large and rarely used).
    Tls(Box<TlsStream<TcpStream>>),
    /// An in-memory pipe, for the codec's own tests.
    #[cfg(test)]
    Mem(tokio::io::DuplexStream),
}
