//! Shutting an engine down on SIGINT / SIGTERM (through `signal-hook`, which handles the
//! async-signal-safety that hand-written handlers get wrong).

use std::io;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::EngineHandle;

impl EngineHandle {
    /// Starts the graceful shutdown (with `timeout`, as [`shutdown`](Self::shutdown)) when the
    /// process gets SIGINT (Ctrl-C) or SIGTERM (`kill`, a container stop); a second such
    /// signal exits the process at once with status 130. A small thread waits for the
    /// signals and ends when the engine has stopped (the handlers stay installed: a later
    /// SIGINT does nothing, so call it for the engine that lives as long as the process).
    /// Typical `main`:
    ///
    /// ```no_run
    /// # use netpoll::{Conn, Engine};
    /// # struct Echo;
    /// # impl netpoll::Handler for Echo {
    /// #     type State = ();
    /// #     fn on_open(&mut self, _: &Conn) {}
    /// #     fn on_data(&mut self, _: &Conn, _: &mut (), d: &mut [u8]) -> usize { d.len() }
    /// # }
    /// use std::time::Duration;
    ///
    /// let engine = Engine::builder().listen("0.0.0.0:7000").start(|_| Echo)?;
    /// engine.shutdown_on_signals(Duration::from_secs(10))?;
    /// let stats = engine.wait(); // returns after Ctrl-C and the graceful close
    /// println!("{stats}");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// If the signal handlers cannot be installed or the thread cannot be started.
    pub fn shutdown_on_signals(&self, timeout: Duration) -> io::Result<()> {
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        self.keep_signal_handle(signals.handle());
        let engine = self.clone();
        std::thread::Builder::new()
            .name("netpoll-signals".into())
            .spawn(move || {
                let mut seen = false;
                for signal in signals.forever() {
                    if seen {
                        tracing::warn!(signal, "second signal: exiting at once");
                        std::process::exit(130);
                    }
                    seen = true;
                    tracing::info!(signal, "signal: shutting down gracefully");
                    engine.shutdown(timeout);
                }
            })?;
        Ok(())
    }
}
