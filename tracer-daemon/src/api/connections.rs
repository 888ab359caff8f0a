//! Bounded listeners: every listener the agent opens has a cap on open connections and closes
//! connections that stay silent past an idle timeout, so a client that opens thousands of idle
//! connections costs a bounded number of file descriptors and bytes, and never starves the main
//! API or the agent's own file needs (BPF links, /proc reads). Connections over the cap are
//! accepted and closed at once (so the kernel's backlog never fills with them), and counted.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};
use tokio_stream::Stream;
use tracing::warn;

/// How many connections a listener keeps open at once, and how long one may stay silent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once; more are closed on arrival.
    pub max_connections: usize,
    /// A connection that neither sends nor receives a byte for this long is closed.
    pub idle_timeout: Duration,
}

/// The main API: a few tools and people at once, watch streams kept alive by HTTP/2 pings.
pub const API_LIMITS: ConnectionLimits = ConnectionLimits {
    max_connections: 256,
    idle_timeout: Duration::from_secs(300),
};

/// The health-only port: one kubelet probe at a time per probe kind, each a new connection.
pub const HEALTH_LIMITS: ConnectionLimits = ConnectionLimits {
    max_connections: 32,
    idle_timeout: Duration::from_secs(10),
};

/// The metrics port: a scrape or two at a time (Prometheus reconnects when a kept-alive
/// connection was closed between scrapes).
pub const METRICS_LIMITS: ConnectionLimits = ConnectionLimits {
    max_connections: 32,
    idle_timeout: Duration::from_secs(10),
};

/// What happened on one listener (read by the metrics endpoint).
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Connections accepted and served.
    pub accepted: AtomicU64,
    /// Connections closed on arrival because the listener was at its cap.
    pub refused: AtomicU64,
    /// Connections closed after staying silent past the idle timeout.
    pub timed_out: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    /// Failed accepts (e.g. the process ran out of file descriptors).
    pub accept_errors: AtomicU64,
}

/// A listener the agent can bound.
pub trait Accept: Send + Sync + Unpin + 'static {
    /// The connection type.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Polls for the next connection.
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>>;
}

impl Accept for TcpListener {
    type Io = TcpStream;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<TcpStream>> {
        Self::poll_accept(self, cx).map_ok(|(stream, _)| stream)
    }
}

impl Accept for UnixListener {
    type Io = UnixStream;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<UnixStream>> {
        Self::poll_accept(self, cx).map_ok(|(stream, _)| stream)
    }
}

/// A listener with a connection cap and an idle timeout: a stream of connections for tonic, a
/// [`axum::serve::Listener`] for axum.
pub struct Bounded<L> {
    listener: L,
    name: &'static str,
    limits: ConnectionLimits,
    slots: Arc<Semaphore>,
    stats: Arc<ListenerStats>,
    /// Set after a failed accept: wait before trying again (EMFILE would otherwise spin).
    backoff: Option<Pin<Box<Sleep>>>,
}

impl<L: Accept> Bounded<L> {
    /// Bounds `listener` (named in logs) by `limits`, counting into `stats`.
    pub fn new(
        listener: L,
        name: &'static str,
        limits: ConnectionLimits,
        stats: Arc<ListenerStats>,
    ) -> Self {
        Self {
            listener,
            name,
            limits,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            stats,
            backoff: None,
        }
    }

    /// The underlying listener.
    pub fn get_ref(&self) -> &L {
        &self.listener
    }

    fn poll_next_connection(&mut self, cx: &mut Context<'_>) -> Poll<BoundedIo<L::Io>> {
        loop {
            if let Some(backoff) = &mut self.backoff {
                ready!(backoff.as_mut().poll(cx));
                self.backoff = None;
            }
            match ready!(self.listener.poll_accept(cx)) {
                Ok(io) => match Arc::clone(&self.slots).try_acquire_owned() {
                    Ok(permit) => {
                        let _ = self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                        let _ = self.stats.open.fetch_add(1, Ordering::Relaxed);
                        return Poll::Ready(BoundedIo::new(
                            io,
                            permit,
                            self.limits.idle_timeout,
                            Arc::clone(&self.stats),
                        ));
                    }
                    Err(_) => {
                        // Closed at once: its descriptor is back before the next accept.
                        drop(io);
                        let refused = self.stats.refused.fetch_add(1, Ordering::Relaxed);
                        if refused.is_power_of_two() {
                            warn!(
                                listener = self.name,
                                max_connections = self.limits.max_connections,
                                refused = refused + 1,
                                "connection cap reached; closing new connections"
                            );
                        }
                    }
                },
                Err(error) => {
                    let errors = self.stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                    if errors.is_power_of_two() {
                        warn!(listener = self.name, %error, errors = errors + 1, "accept failed; retrying");
                    }
                    self.backoff = Some(Box::pin(tokio::time::sleep(Duration::from_millis(50))));
                }
            }
        }
    }
}

impl<L: Accept> Stream for Bounded<L> {
    type Item = io::Result<BoundedIo<L::Io>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.poll_next_connection(cx).map(|io| Some(Ok(io)))
    }
}

impl axum::serve::Listener for Bounded<TcpListener> {
    type Io = BoundedIo<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let io = std::future::poll_fn(|cx| self.poll_next_connection(cx)).await;
            // A connection whose peer already left has no address: skip it.
            if let Ok(addr) = io.io.peer_addr() {
                return (io, addr);
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// A connection holding its slot under the listener's cap, closed when silent for too long.
pub struct BoundedIo<T> {
    io: T,
    _slot: OwnedSemaphorePermit,
    idle_timeout: Duration,
    idle: Pin<Box<Sleep>>,
    stats: Arc<ListenerStats>,
}

impl<T> BoundedIo<T> {
    fn new(
        io: T,
        slot: OwnedSemaphorePermit,
        idle_timeout: Duration,
        stats: Arc<ListenerStats>,
    ) -> Self {
        Self {
            io,
            _slot: slot,
            idle_timeout,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            stats,
        }
    }

    fn active(&mut self) {
        self.idle.as_mut().reset(Instant::now() + self.idle_timeout);
    }

    /// Ready with an error once the connection has been silent past the timeout.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        ready!(self.idle.as_mut().poll(cx));
        let _ = self.stats.timed_out.fetch_add(1, Ordering::Relaxed);
        // Not again for this connection: the server closes it after this error.
        self.idle
            .as_mut()
            .reset(Instant::now() + Duration::from_secs(3600));
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            "connection idle past its timeout",
        ))
    }
}

impl<T> Drop for BoundedIo<T> {
    fn drop(&mut self) {
        let _ = self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for BoundedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.active();
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for BoundedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write(cx, data) {
            Poll::Ready(Ok(written)) => {
                if written > 0 {
                    this.active();
                }
                Poll::Ready(Ok(written))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            // A peer that reads nothing for the whole timeout is as good as gone.
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(written)) => {
                if written > 0 {
                    this.active();
                }
                Poll::Ready(Ok(written))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for BoundedIo<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Raises this process's open-file limit to its hard limit (the listeners' caps then stay far
/// below it) and returns the limit now in force.
pub fn raise_file_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
            limit = raised;
        }
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;
    use tokio_stream::StreamExt as _;

    #[tokio::test]
    async fn connections_past_the_cap_are_closed_and_counted_and_silent_ones_time_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stats = Arc::new(ListenerStats::default());
        let limits = ConnectionLimits {
            max_connections: 2,
            idle_timeout: Duration::from_millis(300),
        };
        let mut incoming = Bounded::new(listener, "test", limits, Arc::clone(&stats));
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Some(Ok(io)) = incoming.next().await {
                open.push(io);
                if open.len() == 2 {
                    break;
                }
            }
            // Over the cap: the third is closed by the accept loop.
            let third = tokio::time::timeout(Duration::from_millis(500), incoming.next()).await;
            assert!(third.is_err(), "a third connection was handed out");
            let mut buf = [0u8; 1];
            let idle = open[0].read(&mut buf).await;
            assert_eq!(
                idle.expect_err("idle").kind(),
                io::ErrorKind::TimedOut,
                "silent connection not timed out"
            );
        });
        let _a = TcpStream::connect(addr).await.expect("first");
        let _b = TcpStream::connect(addr).await.expect("second");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut c = TcpStream::connect(addr).await.expect("third connects");
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "the third connection stayed open: {closed:?}"
        );
        held.await.expect("server side");
        assert_eq!(stats.refused.load(Ordering::Relaxed), 1);
        assert_eq!(stats.timed_out.load(Ordering::Relaxed), 1);
        assert_eq!(stats.accepted.load(Ordering::Relaxed), 2);
    }
}
