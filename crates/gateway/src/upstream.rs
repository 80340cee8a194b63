//! Connections to one instance, driven by the requests that use them.
//!
//! hyper's pooled client (hyper-util's legacy `Client`) runs each connection
//! in a task of its own and hands it every request and answer through
//! channels: a task switch each way, and on a gateway that shares its cores
//! with clients and instances, wake-ups of parked workers. Here a connection
//! has no task. The request's future drives it until the answer's head is
//! in; the answer's body, polled by the client connection's task as it sends
//! the body on, drives it to the body's end; then the connection goes back to
//! the instance's idle list. An idle connection is not polled: one the
//! instance closed meanwhile is found closed when taken, and dropped, and a
//! request a connection turns down unsent goes out on a new one.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long a connection may sit idle before it is closed rather than used:
/// well inside the instance's own wait for a next request (Agora's server
/// waits 30 s for a request's head), so the instance never closes one just
/// as the gateway sends on it.
const IDLE_LIMIT: Duration = Duration::from_secs(20);

/// The most idle connections kept per instance.
const MAX_IDLE: usize = 512;

/// Why a request got no answer.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection could be made (or none in time): the instance saw
    /// nothing, so the request may go to another.
    Connect(String),
    /// The connection failed with the request on it: the instance may have
    /// seen it.
    Failed(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "connecting failed: {e}"),
            SendError::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// One connection: the request side and the connection it drives.
struct Driven {
    sender: SendRequest<Body>,
    /// `None` once it ended (closed or failed).
    conn: Option<Connection<TokioIo<TcpStream>, Body>>,
    idle_since: Instant,
}

impl Driven {
    /// Lets the connection do what it can now; `false` once it has ended.
    fn poll_conn(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(conn) = &mut self.conn
            && Pin::new(conn).poll(cx).is_ready()
        {
            self.conn = None;
        }
        self.conn.is_some()
    }
}

/// An instance's connections.
#[derive(Default)]
pub(crate) struct Connections {
    /// The most recently used at the back.
    idle: Mutex<VecDeque<Driven>>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections").finish_non_exhaustive()
    }
}

impl Connections {
    /// Sends `request` (its URI in origin form, with a `Host` header) to the
    /// instance at `authority` on an idle connection, or a new one made within
    /// `connect_timeout`.
    pub(crate) async fn send(
        self: &Arc<Self>,
        authority: &str,
        connect_timeout: Duration,
        mut request: http::Request<Body>,
    ) -> Result<http::Response<Body>, SendError> {
        loop {
            let (mut driven, reused) = match self.take() {
                Some(driven) => (driven, true),
                None => (connect(authority, connect_timeout).await?, false),
            };
            let answer = driven.sender.try_send_request(request);
            let mut answer = std::pin::pin!(answer);
            let outcome = std::future::poll_fn(|cx| {
                driven.poll_conn(cx);
                answer.as_mut().poll(cx)
            })
            .await;
            match outcome {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    if body.is_end_stream() {
                        // Nothing to read (a HEAD, a 204, an empty body): the
                        // body may never be polled, so the connection goes
                        // back now.
                        self.put(driven);
                        return Ok(http::Response::from_parts(parts, Body::new(body)));
                    }
                    let body = DrivenBody {
                        body,
                        driven: Some(driven),
                        home: Arc::clone(self),
                    };
                    return Ok(http::Response::from_parts(parts, Body::new(body)));
                }
                Err(mut e) => match e.take_message() {
                    // Turned down unsent by a connection that had been idle
                    // (the instance closed it): a new one takes it.
                    Some(unsent) if reused => request = unsent,
                    // Unsent on a new connection: the instance saw nothing.
                    Some(_) => return Err(SendError::Connect(e.into_error().to_string())),
                    None => return Err(SendError::Failed(e.into_error())),
                },
            }
        }
    }

    /// An idle connection still open and ready, the most recently used first.
    fn take(&self) -> Option<Driven> {
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        loop {
            let mut driven = self.idle().pop_back()?;
            if driven.idle_since.elapsed() < IDLE_LIMIT
                && driven.poll_conn(&mut cx)
                && driven.sender.is_ready()
            {
                return Some(driven);
            }
        }
    }

    /// Keeps a connection whose answer was read to its end for the next
    /// request, and closes those idle too long.
    fn put(&self, mut driven: Driven) {
        // One more turn lets it see the exchange through and ask for the
        // next. Without a waker: idle, nobody waits on it.
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        if driven.poll_conn(&mut cx) && driven.sender.is_ready() {
            let now = Instant::now();
            driven.idle_since = now;
            let mut idle = self.idle();
            while idle
                .front()
                .is_some_and(|oldest| now.duration_since(oldest.idle_since) >= IDLE_LIMIT)
            {
                idle.pop_front();
            }
            if idle.len() < MAX_IDLE {
                idle.push_back(driven);
            }
        }
    }

    /// How many connections are idle (for tests).
    #[cfg(test)]
    pub(crate) fn idle_count(&self) -> usize {
        self.idle().len()
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, VecDeque<Driven>> {
        // A list of connections: a panic elsewhere cannot leave it half-changed.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn connect(authority: &str, timeout: Duration) -> Result<Driven, SendError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(authority)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(SendError::Connect(e.to_string())),
        Err(_) => {
            return Err(SendError::Connect(format!(
                "no connection within {timeout:?}"
            )));
        }
    };
    stream
        .set_nodelay(true)
        .map_err(|e| SendError::Connect(e.to_string()))?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| SendError::Connect(e.to_string()))?;
    Ok(Driven {
        sender,
        conn: Some(conn),
        idle_since: Instant::now(),
    })
}

/// An answer's body, driving its connection; the connection goes back to
/// its instance once the body is read to its end (dropped before, it closes).
struct DrivenBody {
    body: Incoming,
    driven: Option<Driven>,
    home: Arc<Connections>,
}

impl HttpBody for DrivenBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(driven) = &mut this.driven {
            driven.poll_conn(cx);
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        let ended = match &frame {
            // A server that knows the length stops polling once the last
            // bytes are in (`is_end_stream`), without waiting for `None`; a
            // chunked body ends with `None`.
            Poll::Ready(Some(Ok(_))) => this.body.is_end_stream(),
            Poll::Ready(None) => true,
            Poll::Ready(Some(Err(_))) => {
                this.driven = None;
                false
            }
            Poll::Pending => false,
        };
        if ended && let Some(driven) = this.driven.take() {
            this.home.put(driven);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt as _;
    use hyper::server::conn::http1 as server;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioTimer;
    use tokio::net::TcpListener;

    use super::*;

    /// An HTTP/1 server on loopback answering `/empty` with a 204 and
    /// anything else with 64 KiB; with `keep_alive` off it closes each
    /// connection after one answer, with `idle` it closes a connection that
    /// waits longer for its next request. Counts the connections it accepted.
    async fn server(keep_alive: bool, idle: Option<Duration>) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let authority = listener.local_addr().expect("an address").to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let answer = service_fn(|request: http::Request<Incoming>| async move {
                        let body = if request.uri().path() == "/empty" {
                            http::Response::builder().status(204).body(Body::empty())
                        } else if request.uri().path() == "/chunked" {
                            // No length: hyper sends it chunked.
                            let chunks = futures_util::stream::iter(
                                [
                                    Bytes::from(vec![b'x'; 32 * 1024]),
                                    Bytes::from(vec![b'y'; 32 * 1024]),
                                ]
                                .map(Ok::<_, Infallible>),
                            );
                            http::Response::builder().body(Body::from_stream(chunks))
                        } else {
                            http::Response::builder().body(Body::from(vec![b'x'; 64 * 1024]))
                        };
                        Ok::<_, Infallible>(body.expect("a response"))
                    });
                    let mut builder = server::Builder::new();
                    builder.keep_alive(keep_alive);
                    if let Some(idle) = idle {
                        builder.timer(TokioTimer::new()).header_read_timeout(idle);
                    }
                    let _ = builder
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), answer)
                        .await;
                });
            }
        });
        (authority, accepted)
    }

    fn get(authority: &str, path: &str) -> http::Request<Body> {
        http::Request::get(path)
            .header(http::header::HOST, authority)
            .body(Body::empty())
            .expect("a request")
    }

    async fn ask(
        connections: &Arc<Connections>,
        authority: &str,
        path: &str,
    ) -> Result<http::Response<Body>, SendError> {
        connections
            .send(authority, Duration::from_secs(1), get(authority, path))
            .await
    }

    async fn fetch(connections: &Arc<Connections>, authority: &str, path: &str) -> usize {
        let answer = ask(connections, authority, path).await.expect("an answer");
        let body = answer.into_body().collect().await.expect("the body");
        body.to_bytes().len()
    }

    #[tokio::test]
    async fn answers_read_to_their_end_leave_the_connection_for_the_next_request() {
        let (authority, accepted) = server(true, None).await;
        let connections = Arc::new(Connections::default());
        for _ in 0..10 {
            assert_eq!(fetch(&connections, &authority, "/").await, 64 * 1024);
        }
        // An empty answer gives the connection back at once.
        let answer = ask(&connections, &authority, "/empty")
            .await
            .expect("an answer");
        assert_eq!(answer.status(), 204);
        assert_eq!(connections.idle_count(), 1);
        drop(answer);
        assert_eq!(fetch(&connections, &authority, "/").await, 64 * 1024);
        // A chunked answer, read to its end, gives it back too.
        assert_eq!(fetch(&connections, &authority, "/chunked").await, 64 * 1024);
        assert_eq!(connections.idle_count(), 1);
        assert_eq!(fetch(&connections, &authority, "/").await, 64 * 1024);
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection for all");
    }

    /// As hyper's server reads a body of known length: until
    /// `is_end_stream`, never to the `None` after it.
    #[tokio::test]
    async fn a_body_read_up_to_its_known_end_leaves_the_connection_too() {
        let (authority, accepted) = server(true, None).await;
        let connections = Arc::new(Connections::default());
        for _ in 0..3 {
            let answer = ask(&connections, &authority, "/").await.expect("an answer");
            let mut body = answer.into_body();
            let mut read = 0;
            while !body.is_end_stream() {
                let frame = body.frame().await.expect("a frame").expect("data");
                read += frame.into_data().map_or(0, |d| d.len());
            }
            assert_eq!(read, 64 * 1024);
            drop(body);
            assert_eq!(connections.idle_count(), 1);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_answer_dropped_unread_takes_its_connection_with_it() {
        let (authority, accepted) = server(true, None).await;
        let connections = Arc::new(Connections::default());
        let answer = ask(&connections, &authority, "/").await.expect("an answer");
        drop(answer);
        assert_eq!(connections.idle_count(), 0);
        assert_eq!(fetch(&connections, &authority, "/").await, 64 * 1024);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// Connections the instance closes — after each answer, or once idle —
    /// are never used again: every request is answered.
    #[tokio::test]
    async fn connections_the_instance_closed_are_not_used_again() {
        let (authority, accepted) = server(false, None).await;
        let connections = Arc::new(Connections::default());
        for _ in 0..5 {
            assert_eq!(fetch(&connections, &authority, "/").await, 64 * 1024);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 5);

        let (authority, accepted) = server(true, Some(Duration::from_millis(100))).await;
        let connections = Arc::new(Connections::default());
        for _ in 0..3 {
            assert_eq!(fetch(&connections, &authority, "/").await, 64 * 1024);
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn no_instance_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let authority = listener.local_addr().expect("an address").to_string();
        drop(listener);
        let connections = Arc::new(Connections::default());
        let failed = ask(&connections, &authority, "/").await;
        assert!(matches!(failed, Err(SendError::Connect(_))), "{failed:?}");
    }
}
