//! [`EngineHandle`]: what handlers and other threads keep of a running engine.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::DialOptions;
use crate::core::config::EngineConfig;
use crate::core::conn::{Conn, ConnId, ConnRef, ConnShared, Phase};
use crate::core::error::{ConfigError, Error};
use crate::core::poller::{self, Adopt, Command, Common, PollerShared, context};
use crate::core::stats::{Stats, count};
use crate::core::timer::{TimerHandle, TimerTask, timeout_ms};
use crate::core::transport::{CODEC_MIN_READ_BUFFER, Codec};
use crate::os;

/// A cheap, `Clone + Send + Sync` handle on a running [`Engine`](super::Engine): dial, timers,
/// counters, and starting the shutdown, from any thread or from inside a handler.
///
/// The handler factory gets one, so a handler can keep it from the start (no
/// `Option<Engine>` behind a lock). A handle does not keep the engine running: the
/// [`Engine`](super::Engine) owns the poller threads, and once it shut down the handle's
/// dials fail with [`Error::Shutdown`] and its timers never run.
///
/// ```no_run
/// use std::time::Duration;
/// use netpoll::{Conn, Engine, EngineHandle, Handler};
///
/// /// Shuts the whole server down when a client sends "quit".
/// struct Admin {
///     engine: EngineHandle,
/// }
///
/// impl Handler for Admin {
///     type State = ();
///     fn on_open(&mut self, _: &Conn) {}
///     fn on_data(&mut self, conn: &Conn, _: &mut (), data: &mut [u8]) -> usize {
///         if data.starts_with(b"quit") {
///             self.engine.shutdown(Duration::from_secs(5));
///         } else {
///             let open = self.engine.stats().open();
///             let _ = conn.write_slice(format!("{open} open\n").as_bytes());
///         }
///         data.len()
///     }
/// }
///
/// let engine = Engine::builder()
///     .listen("127.0.0.1:7000")
///     .start(|engine| Admin { engine: engine.clone() })?;
/// let stats = engine.wait(); // until someone says "quit"
/// # Ok::<(), netpoll::Error>(())
/// ```
#[derive(Clone)]
pub struct EngineHandle {
    inner: Arc<Inner>,
}

struct Inner {
    common: Arc<Common>,
    pollers: Arc<[Arc<PollerShared>]>,
    local_addrs: Vec<SocketAddr>,
    next_dial: AtomicUsize,
    next_timer: AtomicUsize,
    /// Closed when the engine stopped, which ends the thread of `shutdown_on_signals`.
    signals: std::sync::Mutex<Vec<signal_hook::iterator::Handle>>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("pollers", &self.inner.pollers.len())
            .field("local_addrs", &self.inner.local_addrs)
            .field("shutting_down", &self.is_shutting_down())
            .finish()
    }
}

impl EngineHandle {
    pub(super) fn new(
        common: Arc<Common>,
        pollers: Arc<[Arc<PollerShared>]>,
        local_addrs: Vec<SocketAddr>,
    ) -> Self {
        EngineHandle {
            inner: Arc::new(Inner {
                common,
                pollers,
                local_addrs,
                next_dial: AtomicUsize::new(0),
                next_timer: AtomicUsize::new(0),
                signals: std::sync::Mutex::new(Vec::new()),
            }),
        }
    }

    /// The bound listening addresses, in the order given to the builder (with the real port
    /// where port 0 was asked for).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.inner.local_addrs
    }

    /// The engine's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.common.config
    }

    /// Opens an outbound connection. Returns at once with a handle; writes made before the
    /// connection is established are queued and sent when it is. When it is established
    /// [`Handler::on_open`](crate::Handler::on_open) runs on its poller; if it cannot be,
    /// [`Handler::on_connect_error`](crate::Handler::on_connect_error) runs instead.
    ///
    /// # Errors
    /// As for [`dial_with`](Self::dial_with): [`Error::Io`] if the socket cannot be created,
    /// the connect fails at once, or `max_connections` connections are open;
    /// [`Error::Shutdown`] once the shutdown started.
    pub fn dial(&self, addr: SocketAddr) -> Result<Conn, Error> {
        self.dial_with(addr, DialOptions::default())
    }

    /// [`dial`](Self::dial) with a source address and/or timeout.
    ///
    /// # Errors
    /// [`Error::Shutdown`] once the shutdown started; [`Error::Io`] if the socket cannot be
    /// created or bound (out of descriptors, a source address in use), if the kernel refuses
    /// the connect at once (network unreachable, say), or if `max_connections` connections are
    /// open (an [`io::ErrorKind::Other`] error). No callback runs for such a dial. A failure to
    /// connect found later (refused, timed out) goes to
    /// [`Handler::on_connect_error`](crate::Handler::on_connect_error) instead.
    pub fn dial_with(&self, addr: SocketAddr, opts: DialOptions) -> Result<Conn, Error> {
        self.dial_prepared(addr, opts, None, |_| {})
    }

    /// Dials through `codec` (if any; TLS), letting a protocol layer `prepare` the
    /// connection's shared state (its bits and attachment) before any poller can see it.
    pub(crate) fn dial_prepared(
        &self,
        addr: SocketAddr,
        opts: DialOptions,
        codec: Option<Box<dyn Codec>>,
        prepare: impl FnOnce(&Conn),
    ) -> Result<Conn, Error> {
        let common = &self.inner.common;
        if common.shutting_down.load(Ordering::Acquire) {
            return Err(Error::Shutdown);
        }
        let config = &common.config;
        if codec.is_some() && config.read_buffer_size < CODEC_MIN_READ_BUFFER {
            return Err(Error::Config(ConfigError {
                field: "read_buffer_size",
                reason: format!(
                    "{} is under the {CODEC_MIN_READ_BUFFER} B TLS needs (two records)",
                    config.read_buffer_size
                ),
            }));
        }
        if !common.reserve_connection() {
            return Err(Error::Io(io::Error::other("max_connections reached")));
        }
        let stream = match os::connect(addr, opts.local_addr) {
            Ok(stream) => stream,
            Err(e) => {
                common.release_connection();
                return Err(e.into());
            }
        };
        os::configure(&stream, &config.stream);
        let pollers = &self.inner.pollers;
        let target = self.inner.next_dial.fetch_add(1, Ordering::Relaxed) % pollers.len();
        let poller = &pollers[target];
        let id = ConnId(common.next_id.fetch_add(1, Ordering::Relaxed));
        let shared = ConnRef::new(ConnShared::new(
            id,
            addr,
            stream,
            codec,
            poller.clone(),
            Phase::Connecting,
        ));
        let conn = Conn::from_shared(shared.clone());
        prepare(&conn);
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
        let pollers = &self.inner.pollers;
        let i = self.inner.next_timer.fetch_add(1, Ordering::Relaxed) % pollers.len();
        &pollers[i]
    }

    /// Counters summed over all pollers.
    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        for p in self.inner.pollers.iter() {
            p.stats.snapshot_into(&mut s);
        }
        s
    }

    /// Number of poller threads.
    pub fn pollers(&self) -> usize {
        self.inner.pollers.len()
    }

    /// Starts the graceful shutdown and returns at once: accepting stops, every connection
    /// closes gracefully (each `on_close` runs with
    /// [`CloseReason::Shutdown`](crate::CloseReason::Shutdown)), queued bytes get up to
    /// `timeout` to flush, then the pollers stop. [`Engine::wait`](super::Engine::wait) (or
    /// [`Engine::shutdown`](super::Engine::shutdown)) on the owner waits for the end. Later
    /// calls do nothing; safe from any thread, a handler callback or a timer included.
    pub fn shutdown(&self, timeout: Duration) {
        let common = &self.inner.common;
        if common.shutting_down.swap(true, Ordering::AcqRel) {
            return;
        }
        let deadline = Instant::now() + timeout;
        for p in self.inner.pollers.iter() {
            p.send(Command::Shutdown { deadline });
        }
    }

    /// True once the shutdown started.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.common.shutting_down.load(Ordering::Acquire)
    }

    pub(super) fn keep_signal_handle(&self, handle: signal_hook::iterator::Handle) {
        let mut kept = self.inner.signals.lock().unwrap_or_else(|p| p.into_inner());
        kept.push(handle);
    }

    /// The engine stopped: the threads of `shutdown_on_signals` end. (signal-hook does not give
    /// the signals their default action back: a later SIGINT is then ignored.)
    pub(super) fn stopped(&self) {
        let mut kept = self.inner.signals.lock().unwrap_or_else(|p| p.into_inner());
        for h in kept.drain(..) {
            h.close();
        }
    }

    /// True on one of this engine's poller threads (which cannot wait for themselves).
    pub(super) fn on_own_poller(&self) -> bool {
        self.inner.pollers.iter().any(|p| context::is_current(p))
    }
}
