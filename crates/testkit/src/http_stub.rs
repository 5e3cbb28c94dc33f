//! A scripted HTTP server on loopback for tests of plinth's outbound HTTP clients (an identity
//! provider's JWKS URL, for one): HTTP/1.1 on 127.0.0.1, one thread, one request per connection,
//! every request answered with what the test set last, and counted. It stops when dropped.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the server answers.
#[derive(Debug, Clone)]
pub enum Answer {
    /// This status and body, as `application/json` whatever the body holds.
    Body(u16, String),
    /// `302 Found` to this URL.
    Redirect(String),
}

impl Answer {
    /// `200 OK` with `value`.
    pub fn json(value: &serde_json::Value) -> Self {
        Self::Body(200, value.to_string())
    }
}

/// The server; see the module.
#[derive(Debug)]
pub struct StubServer {
    addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StubServer {
    /// Starts answering `answer`.
    pub fn start(answer: Answer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(answer));
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (answer, hits, stop) = (answer.clone(), hits.clone(), stop.clone());
            move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(mut stream) = stream else { continue };
                    hits.fetch_add(1, Ordering::SeqCst);
                    let answer = answer.lock().unwrap().clone();
                    reply(&mut stream, &answer);
                }
            }
        });
        Self {
            addr,
            answer,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    /// A URL of the server (any path gets the same answer).
    pub fn url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    /// Answers `answer` from now on.
    pub fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    /// Requests so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Waits until `more` further requests came, for 10 s at most.
    pub async fn await_hits(&self, more: usize) {
        let target = self.hits() + more;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.hits() < target {
            assert!(
                Instant::now() < deadline,
                "{more} more requests did not come within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for StubServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads the request's head (bounded by a 2 s read timeout) and writes `answer`.
fn reply(stream: &mut TcpStream, answer: &Answer) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut request = Vec::new();
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&chunk[..n]),
        }
    }
    let (status, location, body) = match answer {
        Answer::Body(status, body) => (format!("{status} Stub"), String::new(), body.as_str()),
        Answer::Redirect(to) => ("302 Found".to_owned(), format!("Location: {to}\r\n"), ""),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n{location}\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
}
