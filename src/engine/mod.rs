//! The [`Engine`] facade over the core: starts the pollers, binds the listeners, dials,
//! schedules timers, reports stats and shuts down.

mod builder;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::Poll;
use mio::net::TcpListener;

use crate::core::config::{AcceptMode, EngineConfig};
use crate::core::conn::{Conn, ConnId, ConnShared, Phase};
use crate::core::error::Error;
use crate::core::handler::Handler;
use crate::core::poller::{self, Adopt, Command, Common, Poller, PollerShared, context};
use crate::core::stats::{Stats, count};
use crate::core::timer::{TimerHandle, TimerTask, timeout_ms};
use crate::os;
pub use builder::EngineBuilder;

/// Options for [`Engine::dial_with`].
///
/// ```no_run
/// # fn demo(engine: &netpoll::Engine) -> Result<(), netpoll::Error> {
/// use std::net::SocketAddr;
/// use std::time::Duration;
/// use netpoll::DialOptions;
///
/// // A load client: 100k connections need more than one source address's ephemeral ports.
/// let target: SocketAddr = ([10, 0, 0, 1], 9000).into();
/// for i in 0..100_000u32 {
///     let source = ([127, 0, 0, 2 + (i % 4) as u8], 0); // 127.0.0.2 .. 127.0.0.5
///     let opts = DialOptions {
///         local_addr: Some(source.into()),
///         timeout: Some(Duration::from_secs(3)),
///     };
///     engine.dial_with(target, opts)?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct DialOptions {
    /// Local address to bind before connecting, e.g. `127.0.0.2:0` to spread a load client's
    /// sockets over several source addresses. Default: chosen by the OS.
    pub local_addr: Option<SocketAddr>,
    /// Connect timeout. Default: the builder's `connect_timeout`.
    pub timeout: Option<Duration>,
}

/// A running event-loop engine: a pool of poller threads serving every connection accepted
/// from its listeners or dialed through it.
///
/// Dropping the engine shuts it down with the builder's `shutdown_timeout`.
///
/// ```no_run
/// use std::time::Duration;
/// use netpoll::{Conn, Engine};
/// # struct Echo;
/// # impl netpoll::Handler for Echo {
/// #     type State = ();
/// #     fn on_open(&mut self, _: &Conn) {}
/// #     fn on_data(&mut self, c: &Conn, _: &mut (), d: &mut [u8]) -> usize {
/// #         let _ = c.write_slice(d);
/// #         d.len()
/// #     }
/// # }
///
/// let engine = Engine::builder().listen("127.0.0.1:0").start(|_| Echo)?;
/// let addr = engine.local_addrs()[0]; // the port the OS picked for port 0
///
/// // The same engine dials too: this connection's callbacks run on one of its pollers.
/// let conn = engine.dial(addr)?;
/// let _ = conn.write_slice(b"hello"); // queued until the connection is up
///
/// std::thread::sleep(Duration::from_secs(1));
/// let stats = engine.shutdown(Duration::from_secs(5)); // flush, close, join the pollers
/// println!("{} connections, {} bytes in", stats.opened, stats.bytes_in);
/// # Ok::<(), netpoll::Error>(())
/// ```
pub struct Engine {
    common: Arc<Common>,
    pollers: Arc<[Arc<PollerShared>]>,
    threads: Vec<JoinHandle<()>>,
    local_addrs: Vec<SocketAddr>,
    next_dial: AtomicUsize,
    next_timer: AtomicUsize,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("pollers", &self.pollers.len())
            .field("local_addrs", &self.local_addrs)
            .finish()
    }
}

impl Engine {
    /// A builder with the default configuration.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::new()
    }

    /// Starts an engine from a validated configuration; `new_handler(i)` makes poller `i`'s
    /// handler.
    ///
    /// # Errors
    /// [`Error::Io`] if a listener cannot be bound (address in use, say), or a poller or its
    /// thread cannot be created. Pollers already started are stopped again.
    pub fn start<H, F>(config: EngineConfig, mut new_handler: F) -> Result<Engine, Error>
    where
        H: Handler,
        F: FnMut(usize) -> H,
    {
        let n = config.pollers();
        let backlog = config.backlog as i32;
        // Listeners per poller: all on poller 0 when handing off, one each with SO_REUSEPORT.
        let mut listeners: Vec<Vec<TcpListener>> = (0..n).map(|_| Vec::new()).collect();
        let mut local_addrs = Vec::new();
        for &addr in &config.listen {
            match config.accept_mode {
                AcceptMode::HandOff => {
                    let l = os::listen(addr, backlog, false)?;
                    local_addrs.push(l.local_addr()?);
                    listeners[0].push(l);
                }
                AcceptMode::ReusePort => {
                    // Port 0 picks a port once; the other pollers join that port.
                    let first = os::listen(addr, backlog, true)?;
                    let actual = first.local_addr()?;
                    local_addrs.push(actual);
                    listeners[0].push(first);
                    for l in listeners.iter_mut().skip(1) {
                        l.push(os::listen(actual, backlog, true)?);
                    }
                }
            }
        }
        let common = Arc::new(Common::new(config));
        let mut polls = Vec::with_capacity(n);
        let mut shareds = Vec::with_capacity(n);
        for i in 0..n {
            let poll = Poll::new()?;
            shareds.push(Arc::new(PollerShared::new(i, common.clone(), &poll)?));
            polls.push(poll);
        }
        let all: Arc<[Arc<PollerShared>]> = shareds.into();
        let mut engine = Engine {
            common: common.clone(),
            pollers: all.clone(),
            threads: Vec::with_capacity(n),
            local_addrs,
            next_dial: AtomicUsize::new(0),
            next_timer: AtomicUsize::new(0),
        };
        for (i, (poll, mut own_listeners)) in polls.into_iter().zip(listeners).enumerate() {
            for (j, l) in own_listeners.iter_mut().enumerate() {
                poll.registry().register(
                    l,
                    mio::Token(poller::listener_token(j)),
                    mio::Interest::READABLE,
                )?;
            }
            let handler = new_handler(i);
            let shared = all[i].clone();
            let all = all.clone();
            let name = format!("{}-poller-{i}", common.config.thread_name);
            let thread = std::thread::Builder::new()
                .name(name)
                .spawn(move || Poller::new(shared, all, poll, handler, own_listeners).run())?;
            // On an early return the engine is dropped, which stops the pollers already
            // running.
            engine.threads.push(thread);
        }
        Ok(engine)
    }

    /// The bound listening addresses, in the order given to the builder (with the real port
    /// where port 0 was asked for).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The engine's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.common.config
    }

    /// Opens an outbound connection. Returns at once with a handle; writes made before the
    /// connection is established are queued and sent when it is. When it is established
    /// [`Handler::on_open`] runs on its poller; if it cannot be,
    /// [`Handler::on_connect_error`] runs instead.
    ///
    /// # Errors
    /// As for [`dial_with`](Self::dial_with): [`Error::Io`] if the socket cannot be created,
    /// the connect fails at once, or `max_connections` connections are open;
    /// [`Error::Shutdown`] after shutdown.
    pub fn dial(&self, addr: SocketAddr) -> Result<Conn, Error> {
        self.dial_with(addr, DialOptions::default())
    }

    /// [`dial`](Self::dial) with a source address and/or timeout.
    ///
    /// # Errors
    /// [`Error::Shutdown`] after shutdown; [`Error::Io`] if the socket cannot be created or
    /// bound (out of descriptors, a source address in use), if the kernel refuses the connect
    /// at once (network unreachable, say), or if `max_connections` connections are open (an
    /// [`io::ErrorKind::Other`] error). No callback runs for such a dial. A failure to connect
    /// found later (refused, timed out) goes to [`Handler::on_connect_error`] instead.
    pub fn dial_with(&self, addr: SocketAddr, opts: DialOptions) -> Result<Conn, Error> {
        self.dial_prepared(addr, opts, |_| {})
    }

    /// Dials, letting a protocol layer `prepare` the connection's shared state (its bits and
    /// attachment) before any poller can see it.
    pub(crate) fn dial_prepared(
        &self,
        addr: SocketAddr,
        opts: DialOptions,
        prepare: impl FnOnce(&Conn),
    ) -> Result<Conn, Error> {
        let common = &self.common;
        if common.shutting_down.load(Ordering::Acquire) {
            return Err(Error::Shutdown);
        }
        let config = &common.config;
        if common.open.load(Ordering::Relaxed) >= config.max_connections {
            return Err(Error::Io(io::Error::other("max_connections reached")));
        }
        let stream = os::connect(addr, opts.local_addr)?;
        os::configure(&stream, &config.stream);
        let target = self.next_dial.fetch_add(1, Ordering::Relaxed) % self.pollers.len();
        let poller = &self.pollers[target];
        let id = ConnId(common.next_id.fetch_add(1, Ordering::Relaxed));
        let shared = Arc::new(ConnShared::new(
            id,
            addr,
            stream,
            poller.clone(),
            Phase::Connecting,
        ));
        let conn = Conn::from_shared(shared.clone());
        prepare(&conn);
        common.open.fetch_add(1, Ordering::Relaxed);
        count(&poller.stats.dialed, 1);
        let deadline = Instant::now() + opts.timeout.unwrap_or(config.connect_timeout);
        poller.send(Command::Adopt(Adopt {
            conn: shared,
            connect_deadline: Some(deadline),
        }));
        Ok(conn)
    }

    /// Runs `f` once after `delay` on one of the engine's pollers (chosen round robin), unless
    /// the returned handle was cancelled or the engine shut down first. It fires at most one
    /// `timer_tick` late, never early. Keep it short: it runs on a poller thread between I/O
    /// events.
    ///
    /// ```no_run
    /// # fn demo(engine: &netpoll::Engine) {
    /// use std::time::Duration;
    /// let timer = engine.after(Duration::from_secs(1), || println!("one second later"));
    /// timer.cancel(); // changed our mind: it never runs
    /// # }
    /// ```
    pub fn after(&self, delay: Duration, f: impl FnOnce() + Send + 'static) -> TimerHandle {
        let mut f = Some(f);
        let task = TimerTask::Engine(Box::new(move || {
            if let Some(f) = f.take() {
                f()
            }
        }));
        poller::schedule(self.next_timer_poller(), delay, 0, task)
    }

    /// Runs `f` every `period` (at least 1 ms) on one of the engine's pollers until the handle
    /// is cancelled or the engine shuts down. Runs missed while the poller was busy are
    /// skipped, not bunched.
    pub fn every(&self, period: Duration, f: impl FnMut() + Send + 'static) -> TimerHandle {
        let task = TimerTask::Engine(Box::new(f));
        let period_ms = timeout_ms(Some(period));
        poller::schedule(self.next_timer_poller(), period, period_ms, task)
    }

    fn next_timer_poller(&self) -> &Arc<PollerShared> {
        let i = self.next_timer.fetch_add(1, Ordering::Relaxed) % self.pollers.len();
        &self.pollers[i]
    }

    /// Counters summed over all pollers.
    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        for p in self.pollers.iter() {
            p.stats.snapshot_into(&mut s);
        }
        s
    }

    /// Number of poller threads.
    pub fn pollers(&self) -> usize {
        self.pollers.len()
    }

    /// Stops accepting, closes every connection gracefully (every `on_close` runs, with
    /// [`CloseReason::Shutdown`](crate::CloseReason::Shutdown)), lets queued bytes flush for
    /// up to `timeout`, then drops what is left and joins the poller threads.
    ///
    /// Called from a handler callback it cannot wait for its own thread: it then starts the
    /// shutdown and returns, and the pollers finish on their own.
    ///
    /// Returns the final counters (taken after the pollers finished, when it could wait for
    /// them), so a server can report what its shutdown closed.
    pub fn shutdown(mut self, timeout: Duration) -> Stats {
        self.stop(timeout);
        self.stats()
    }

    fn stop(&mut self, timeout: Duration) {
        if self.common.shutting_down.swap(true, Ordering::AcqRel) {
            return;
        }
        let deadline = Instant::now() + timeout;
        for p in self.pollers.iter() {
            p.send(Command::Shutdown { deadline });
        }
        let on_own_poller = self.pollers.iter().any(|p| context::is_current(p));
        if on_own_poller {
            return;
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let timeout = self.common.config.shutdown_timeout;
        self.stop(timeout);
    }
}
