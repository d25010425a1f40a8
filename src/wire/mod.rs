//! The Postgres v3 wire protocol as pure functions over bytes: framing, decoding the few messages the
//! proxy must understand, and building the ones it sends itself. No sockets here.

pub mod backend;
pub mod frame;
pub mod frontend;
pub mod read;

pub use frame::{Frame, FrameError, StartupFrame};
