//! `send` against a tiny HTTP/1.1 server on 127.0.0.1 that answers canned replies in order
//! (the last one repeats) and records each request's head; and `Answer`'s reading.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::*;

#[derive(Debug, Clone)]
enum Canned {
    /// A reply; `length: false` delimits the body by closing the connection.
    Reply {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
        length: bool,
    },
    /// Reads the request and never answers.
    Silent,
}

fn reply(status: u16, body: &str) -> Canned {
    Canned::Reply {
        status,
        headers: vec![],
        body: body.as_bytes().to_vec(),
        length: true,
    }
}

struct Server {
    base_url: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Server {
    async fn start(answers: Vec<Canned>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let head = read_request(&stream).await;
                let n = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(head);
                    seen.len()
                };
                let answer = answers[(n - 1).min(answers.len() - 1)].clone();
                tokio::spawn(answer_with(stream, answer));
            }
        });
        Self { base_url, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// The request's head (lowercased), after reading its body.
async fn read_request(stream: &TcpStream) -> String {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        stream.readable().await.unwrap();
        match stream.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("{e}"),
        }
        let text = String::from_utf8_lossy(&data).to_ascii_lowercase();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |n| n.trim().parse::<usize>().unwrap());
            if data.len() >= end + 4 + length {
                return text[..end].to_owned();
            }
        }
    }
    String::from_utf8_lossy(&data).to_ascii_lowercase()
}

async fn answer_with(mut stream: TcpStream, answer: Canned) {
    match answer {
        Canned::Silent => {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Canned::Reply {
            status,
            headers,
            body,
            length,
        } => {
            let mut head = format!("HTTP/1.1 {status} Canned\r\nconnection: close\r\n");
            if length {
                head.push_str(&format!("content-length: {}\r\n", body.len()));
            }
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            // The client may stop reading early (an oversized body); that is fine.
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&body).await;
            let _ = stream.shutdown().await;
        }
    }
}

fn timeouts(request: Duration) -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(1),
        request,
    }
}

fn client(base_url: &str) -> HttpClient {
    HttpClient::new("test", base_url, timeouts(Duration::from_secs(5))).unwrap()
}

fn retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        backoff_base: Duration::from_millis(1),
        backoff_max: Duration::from_millis(5),
    }
}

// ---- send ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_5xx_and_a_429_are_retried_with_a_request_built_anew_each_time() {
    let server = Server::start(vec![reply(503, ""), reply(429, ""), reply(200, "ok")]).await;
    let mut built = 0;
    let answer = client(&server.base_url)
        .send(retries(3), Method::POST, "/v1/things", |request| {
            built += 1;
            request
                .header("x-attempt", built.to_string())
                .json(&serde_json::json!({"n": 1}))
        })
        .await
        .unwrap();
    assert_eq!(
        (answer.status, answer.body.as_slice()),
        (StatusCode::OK, &b"ok"[..])
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    for (i, head) in requests.iter().enumerate() {
        assert!(head.starts_with("post /v1/things http/1.1"), "{head}");
        assert!(head.contains(&format!("x-attempt: {}", i + 1)), "{head}");
        assert!(head.contains(&format!("user-agent: {}", USER_AGENT.to_ascii_lowercase())));
    }
}

/// Collects what the `fmt` subscriber writes.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn each_retry_is_logged_without_headers_or_bodies() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = Server::start(vec![reply(502, "upstream s3cret-body"), reply(204, "")]).await;
    client(&server.base_url)
        .send(retries(2), Method::PUT, "/zones/z.test.", |r| {
            r.header("x-api-key", "s3cret-key")
                .bearer_auth("s3cret-token")
                .body("s3cret-request")
        })
        .await
        .unwrap();
    let refused = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    client(&format!("http://127.0.0.1:{refused}"))
        .send(retries(2), Method::GET, "/x", |r| {
            r.bearer_auth("s3cret-token")
        })
        .await
        .unwrap_err();

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(lines.len(), 2, "{logs}");
    for field in [
        "WARN",
        "test call failed; retrying",
        "method=PUT",
        "path=\"/zones/z.test.\"",
        "attempt=1",
        "attempts=2",
        "status=502 Bad Gateway",
    ] {
        assert!(lines[0].contains(field), "{field}: {logs}");
    }
    assert!(lines[1].contains("error=error sending request"), "{logs}");
    assert!(lines[1].contains(&format!("127.0.0.1:{refused}")), "{logs}");
    assert!(!logs.contains("s3cret"), "{logs}");
}

#[tokio::test]
async fn the_last_attempts_answer_is_returned_when_attempts_run_out() {
    let server = Server::start(vec![reply(500, "broken")]).await;
    let answer = client(&server.base_url)
        .send(retries(2), Method::GET, "/x", |r| r)
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(answer.message(), "broken");
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn once_is_never_repeated_and_a_4xx_is_an_answer() {
    let server = Server::start(vec![reply(503, "")]).await;
    let answer = client(&server.base_url)
        .send(RetryPolicy::ONCE, Method::POST, "/x", |r| r)
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(server.requests().len(), 1);

    let server = Server::start(vec![reply(404, ""), reply(200, "")]).await;
    let answer = client(&server.base_url)
        .send(retries(3), Method::GET, "/x", |r| r)
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn a_redirect_is_returned_and_never_followed_with_the_credentials() {
    let elsewhere = Server::start(vec![reply(200, "")]).await;
    let server = Server::start(vec![Canned::Reply {
        status: 302,
        headers: vec![("location", format!("{}/steal", elsewhere.base_url))],
        body: vec![],
        length: true,
    }])
    .await;
    let answer = client(&format!("{}/", server.base_url))
        .send(retries(3), Method::GET, "/x", |r| {
            r.header("x-api-key", "secret")
        })
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::FOUND);
    assert_eq!(server.requests().len(), 1);
    assert!(
        server.requests()[0].starts_with("get /x "),
        "{:?}",
        server.requests()
    );
    assert!(elsewhere.requests().is_empty());
}

#[tokio::test]
async fn a_refused_connection_is_unavailable() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let err = client(&format!("http://127.0.0.1:{port}"))
        .send(retries(2), Method::GET, "/x", |r| r)
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Unavailable(_)), "{err:?}");
    assert!(
        plinth_domain::ports::Chain(&err)
            .to_string()
            .contains(&format!("127.0.0.1:{port}"))
    );
}

#[tokio::test]
async fn a_silent_server_times_out_on_every_attempt_within_the_bound() {
    let server = Server::start(vec![Canned::Silent]).await;
    let http = HttpClient::new(
        "test",
        &server.base_url,
        timeouts(Duration::from_millis(200)),
    )
    .unwrap();
    let started = Instant::now();
    let err = http
        .send(retries(2), Method::GET, "/x", |r| r)
        .await
        .unwrap_err();
    let took = started.elapsed();
    let TransportError::Timeout { bound, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(*bound, Duration::from_millis(200));
    assert_eq!(err.to_string(), "no answer within 200ms");
    assert_eq!(server.requests().len(), 2);
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[tokio::test]
async fn an_oversized_body_is_refused_and_not_retried() {
    let big = vec![b'x'; MAX_BODY_BYTES + 1];
    for length in [true, false] {
        let server = Server::start(vec![
            Canned::Reply {
                status: 500,
                headers: vec![],
                body: big.clone(),
                length,
            },
            reply(200, ""),
        ])
        .await;
        let err = client(&server.base_url)
            .send(retries(3), Method::GET, "/x", |r| r)
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::TooLarge { .. }), "{err:?}");
        assert_eq!(server.requests().len(), 1, "length announced: {length}");
    }

    let server = Server::start(vec![Canned::Reply {
        status: 200,
        headers: vec![],
        body: vec![b'x'; MAX_BODY_BYTES],
        length: false,
    }])
    .await;
    let answer = client(&server.base_url)
        .send(retries(1), Method::GET, "/x", |r| r)
        .await
        .unwrap();
    assert_eq!(answer.body.len(), MAX_BODY_BYTES);
}

// ---- retry policy ---------------------------------------------------------------------------------

#[test]
fn the_backoff_is_jittered_under_a_doubling_cap() {
    let policy = RetryPolicy {
        max_attempts: 5,
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_millis(300),
    };
    for _ in 0..200 {
        assert!(policy.backoff(1) <= Duration::from_millis(100));
        assert!(policy.backoff(2) <= Duration::from_millis(200));
        assert!(policy.backoff(3) <= Duration::from_millis(300));
        assert!(policy.backoff(40) <= Duration::from_millis(300));
    }
    assert_eq!(RetryPolicy::ONCE.backoff(1), Duration::ZERO);
    assert_eq!(
        RetryPolicy {
            max_attempts: 0,
            ..policy
        }
        .attempts(),
        1
    );
    assert!(is_retryable(StatusCode::TOO_MANY_REQUESTS));
    assert!(is_retryable(StatusCode::BAD_GATEWAY));
    assert!(!is_retryable(StatusCode::CONFLICT));
}

// ---- answers ------------------------------------------------------------------------------------

fn answer(status: u16, body: &str) -> Answer {
    Answer {
        status: StatusCode::from_u16(status).unwrap(),
        body: body.as_bytes().to_vec(),
    }
}

#[test]
fn the_message_is_the_servers_own_words() {
    let problem =
        r#"{"type":"about:blank","title":"Not Found","status":404,"detail":"no subnet-x"}"#;
    assert_eq!(answer(404, problem).message(), "no subnet-x");
    assert_eq!(answer(409, r#"{"title":"Conflict"}"#).message(), "Conflict");
    assert_eq!(
        answer(409, r#"{"title":"Conflict","detail":" "}"#).message(),
        "Conflict"
    );
    assert_eq!(
        answer(422, r#"{"error": "RRset x. IN A: bad content"}"#).message(),
        "RRset x. IN A: bad content"
    );
    assert_eq!(answer(500, "  plain words\n").message(), "plain words");
    assert_eq!(answer(502, "").message(), "502 Bad Gateway");
    assert_eq!(answer(502, " \n").message(), "502 Bad Gateway");
    assert_eq!(answer(400, r#"{"other": 1}"#).message(), r#"{"other": 1}"#);

    let long = "é".repeat(400);
    let message = answer(500, &long).message();
    assert_eq!(message.chars().count(), 301);
    assert!(message.ends_with("é…"), "{message}");
    let exact = "a".repeat(300);
    assert_eq!(answer(500, &exact).message(), exact);
}

#[test]
fn json_reads_the_body_and_debug_hides_it() {
    #[derive(serde::Deserialize)]
    struct Id {
        id: String,
    }
    let a = answer(201, r#"{"id":"vm-1","user_data":"token"}"#);
    assert_eq!(a.json::<Id>().unwrap().id, "vm-1");
    assert!(answer(200, "nope").json::<Id>().is_err());
    let debug = format!("{a:?}");
    assert!(!debug.contains("token"), "{debug}");
    assert!(debug.contains("201"), "{debug}");
}
