//! The replica: every client's newest report, on disk and in memory.

pub mod storage;
pub mod store;
