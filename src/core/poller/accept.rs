//! Accepting connections and spreading them over the pollers.

use std::io;
use std::sync::atomic::Ordering;

use tracing::warn;

use super::{Adopt, Command, Poller};
use crate::core::config::AcceptMode;
use crate::core::conn::{ConnId, ConnRef, ConnShared, Phase};
use crate::core::handler::Handler;
use crate::core::stats::count;
use crate::os;

impl<H: Handler> Poller<H> {
    /// Accepts until the listener is drained, handing connections to pollers round robin
    /// (one wake-up per target per batch).
    pub(super) fn accept_ready(&mut self, listener: usize) {
        if self.accept_resume_at.is_some() || self.shutdown_deadline.is_some() {
            return;
        }
        let common = self.shared.common.clone();
        let config = &common.config;
        let mut handoff: Vec<Vec<Command>> = Vec::new();
        loop {
            if !common.reserve_connection() {
                self.pause_accept("connection limit reached", None);
                break;
            }
            count(&self.shared.stats.accept_calls, 1);
            let accepted = self.listeners[listener].accept();
            if accepted.is_err() {
                common.release_connection();
            }
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    let why = if os::is_resource_exhaustion(&e) {
                        "out of descriptors or memory"
                    } else {
                        "accept failed"
                    };
                    self.pause_accept(why, Some(&e));
                    break;
                }
            };
            count(&self.shared.stats.accepted, 1);
            os::configure(&stream, &config.stream);
            let target = match config.accept_mode {
                AcceptMode::ReusePort => self.shared.index,
                AcceptMode::HandOff => {
                    let t = self.next_target % self.all.len();
                    self.next_target = self.next_target.wrapping_add(1);
                    t
                }
            };
            let codec = match &config.accept_codec {
                None => None,
                Some(make) => match (make.0)() {
                    Ok(codec) => Some(codec),
                    Err(e) => {
                        // Dropping the stream closes it; the place is given back.
                        warn!(error = %e, "cannot set up the connection's codec; dropped");
                        common.release_connection();
                        continue;
                    }
                },
            };
            let id = ConnId(common.next_id.fetch_add(1, Ordering::Relaxed));
            let shared = ConnRef::new(ConnShared::new(
                id,
                peer,
                stream,
                codec,
                self.all[target].clone(),
                Phase::Open,
            ));
            let adopt = Adopt {
                conn: shared,
                connect_deadline: None,
            };
            if target == self.shared.index {
                self.adopt(adopt);
            } else {
                if handoff.len() <= target {
                    handoff.resize_with(self.all.len(), Vec::new);
                }
                handoff[target].push(Command::Adopt(adopt));
            }
        }
        for (target, cmds) in handoff.into_iter().enumerate() {
            if !cmds.is_empty() {
                self.all[target].send_all(cmds);
            }
        }
    }

    fn pause_accept(&mut self, why: &str, error: Option<&io::Error>) {
        let backoff = self.config().accept_backoff;
        self.accept_resume_at = Some(self.now + backoff.as_millis() as u64);
        self.shared
            .common
            .accept_paused
            .store(true, Ordering::Release);
        count(&self.shared.stats.accept_pauses, 1);
        match error {
            Some(e) => {
                warn!(poller = self.shared.index, error = %e, ?backoff, "{why}; accepting paused")
            }
            None => warn!(
                poller = self.shared.index,
                ?backoff,
                "{why}; accepting paused"
            ),
        }
    }

    /// Tries every listener again: edge-triggered listeners raise no new event for connections
    /// already waiting in the backlog.
    pub(super) fn resume_accept(&mut self) {
        if self.listeners.is_empty() {
            return;
        }
        self.accept_resume_at = None;
        for i in 0..self.listeners.len() {
            self.accept_ready(i);
        }
    }
}
