//! The [`Engine`] facade over the core: starts the pollers, binds the listeners, dials,
//! schedules timers, reports stats and shuts down.

mod backoff;
mod builder;
mod handle;
mod signals;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mio::Poll;
use mio::net::TcpListener;

use crate::core::config::{AcceptMode, EngineConfig};
use crate::core::error::Error;
use crate::core::handler::Handler;
use crate::core::poller::{self, Common, Poller, PollerShared};
use crate::core::stats::Stats;
use crate::os;
pub use backoff::Backoff;
pub use builder::EngineBuilder;
pub use handle::EngineHandle;

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
/// The engine owns the poller threads; everything else it does is on its
/// [`EngineHandle`] (which it derefs to): a cheap `Clone + Send + Sync` handle that handlers
/// and other threads keep to dial, schedule timers, read the counters or start the shutdown.
/// The handler factory gets one, so a handler can hold it from the start.
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
/// let engine = Engine::builder().listen("127.0.0.1:0").start(|_engine| Echo)?;
/// let addr = engine.local_addrs()[0]; // the port the OS picked for port 0
///
/// // The same engine dials too: this connection's callbacks run on one of its pollers.
/// let conn = engine.dial(addr)?;
/// let _ = conn.write_slice(b"hello"); // queued until the connection is up
///
/// // Another thread stops it after a second; this one waits for the end.
/// let handle = engine.handle();
/// std::thread::spawn(move || {
///     std::thread::sleep(Duration::from_secs(1));
///     handle.shutdown(Duration::from_secs(5)); // flush, close, then the pollers stop
/// });
/// let stats = engine.wait();
/// println!("{} connections, {} bytes in", stats.opened, stats.bytes_in);
/// # Ok::<(), netpoll::Error>(())
/// ```
pub struct Engine {
    handle: EngineHandle,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("pollers", &self.handle.pollers())
            .field("local_addrs", &self.handle.local_addrs())
            .finish()
    }
}

impl std::ops::Deref for Engine {
    type Target = EngineHandle;

    fn deref(&self) -> &EngineHandle {
        &self.handle
    }
}

impl Engine {
    /// A builder with the default configuration.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::new()
    }

    /// Starts an engine from a validated configuration; `new_handler` makes each poller's
    /// handler (once per poller, given the engine's handle).
    ///
    /// # Errors
    /// [`Error::Io`] if a listener cannot be bound (address in use, say), or a poller or its
    /// thread cannot be created. Pollers already started are stopped again.
    pub fn start<H, F>(config: EngineConfig, mut new_handler: F) -> Result<Engine, Error>
    where
        H: Handler,
        F: FnMut(&EngineHandle) -> H,
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
            handle: EngineHandle::new(common.clone(), all.clone(), local_addrs),
            threads: Vec::with_capacity(n),
        };
        for (i, (poll, mut own_listeners)) in polls.into_iter().zip(listeners).enumerate() {
            for (j, l) in own_listeners.iter_mut().enumerate() {
                poll.registry().register(
                    l,
                    mio::Token(poller::listener_token(j)),
                    mio::Interest::READABLE,
                )?;
            }
            let handler = new_handler(&engine.handle);
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

    /// A handle on this engine for handlers and other threads.
    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
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
        self.handle.shutdown(timeout);
        self.join();
        self.handle.stats()
    }

    /// Waits until the engine has shut down (started by [`EngineHandle::shutdown`] from a
    /// handler, another thread or a signal handler) and returns the final counters. Blocks for
    /// ever if nothing ever shuts it down. Called on one of the engine's own poller threads it
    /// cannot wait for itself: it then starts the shutdown, as dropping the engine does.
    pub fn wait(mut self) -> Stats {
        self.join();
        self.handle.stats()
    }

    fn join(&mut self) {
        if self.handle.on_own_poller() {
            return;
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.handle.stopped();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let timeout = self.handle.config().shutdown_timeout;
        self.handle.shutdown(timeout);
        self.join();
    }
}
