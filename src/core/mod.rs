//! The engine core: connections, pollers, timers, deadlines and the transport seam.
//!
//! The core names no protocol. A protocol layer runs on it as a
//! [`Handler`](handler::Handler), keeps its per-connection state in the handler's state, and
//! reaches shared per-connection state through a crate-visible slot the core offers (the layer
//! bits checked by write [`Gate`](conn::Gate)s and an [`Attachment`](conn::Attachment)).
//!
//! Below it is the OS layer (`crate::os`); above it the [`Engine`](crate::Engine) facade.

pub(crate) mod config;
pub(crate) mod conn;
pub(crate) mod deadline;
pub(crate) mod error;
pub(crate) mod handler;
pub(crate) mod outbound;
pub(crate) mod poller;
pub(crate) mod stats;
pub(crate) mod timer;
pub(crate) mod transport;
