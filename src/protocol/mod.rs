//! The client wire protocol: bytes into lines, lines into requests, replies
//! into text, and the times they carry. Pure: no IO, no clock, no tasks.

pub mod framing;
mod lines;
pub mod time;

pub use lines::*;
