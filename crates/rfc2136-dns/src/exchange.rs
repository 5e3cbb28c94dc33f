//! Carrying one encoded DNS message to the server and its answer back, over TCP (RFC 1035
//! §4.2.2: each message preceded by its length in two bytes, one connection per exchange) or UDP
//! (one datagram each way, answers from elsewhere or for another ID ignored). Encoding and
//! decoding the messages is hickory-proto's; this is only the carriage, with its time bounds.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

/// The largest answer read over UDP; an update's answer is a header, the zone and a TSIG record.
const MAX_UDP_ANSWER: usize = 4096;

/// Why no answer came back.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    /// Nothing within the bound.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection or datagram failed (refused, reset, unreachable).
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Where and how to send, and how long to wait.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Carrier {
    pub(crate) server: SocketAddr,
    pub(crate) udp: bool,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
}

impl Carrier {
    /// Sends `message` (whose ID is `id`) and returns the answer's bytes.
    pub(crate) async fn exchange(&self, id: u16, message: &[u8]) -> Result<Vec<u8>, ExchangeError> {
        if self.udp {
            let bound = self.request_timeout;
            timeout(bound, self.over_udp(id, message))
                .await
                .map_err(|_| ExchangeError::Timeout(bound))?
        } else {
            let bound = self.connect_timeout;
            let mut stream = timeout(bound, TcpStream::connect(self.server))
                .await
                .map_err(|_| ExchangeError::Timeout(bound))??;
            let bound = self.request_timeout;
            timeout(bound, over_tcp(&mut stream, message))
                .await
                .map_err(|_| ExchangeError::Timeout(bound))?
        }
    }

    async fn over_udp(&self, id: u16, message: &[u8]) -> Result<Vec<u8>, ExchangeError> {
        let local: SocketAddr = match self.server {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local).await?;
        // A connected socket only receives from the server.
        socket.connect(self.server).await?;
        socket.send(message).await?;
        let mut buffer = vec![0; MAX_UDP_ANSWER];
        loop {
            let len = socket.recv(&mut buffer).await?;
            let answer = &buffer[..len];
            if answer.len() >= 2 && u16::from_be_bytes([answer[0], answer[1]]) == id {
                return Ok(answer.to_vec());
            }
        }
    }
}

async fn over_tcp(stream: &mut TcpStream, message: &[u8]) -> Result<Vec<u8>, ExchangeError> {
    let len = u16::try_from(message.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "message over 65535 bytes"))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await?;
    let mut len = [0; 2];
    stream.read_exact(&mut len).await?;
    let mut answer = vec![0; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut answer).await?;
    Ok(answer)
}
