//! What a server in a terminal shows its operator: every warning and error,
//! and the events meant for the operator (target [`super::OPERATOR`]), on
//! standard error as well as in the log file.
//!
//! The lines are the log file's, with the server's name after the level,
//! since `herd up` runs a whole herd in one terminal. They are written as
//! they happen, unbuffered: there are few of them (link warnings come at a
//! falling rate), and a terminal reads fast. Only a terminal gets them: a
//! pipe that nobody reads would fill and stall the server.

use std::cell::RefCell;
use std::io::Write as _;

use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

use super::{OPERATOR, format_event};

/// A `tracing` layer writing the operator's events to standard error.
pub struct TerminalLayer {
    prefix: String,
}

impl TerminalLayer {
    /// Lines for server `name`.
    pub fn new(name: &str) -> Self {
        Self {
            prefix: format!("[{name}] "),
        }
    }

    /// Whether an event with `metadata` is one the operator sees.
    pub fn wants(metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= Level::WARN || metadata.target() == OPERATOR
    }
}

thread_local! {
    static LINE: RefCell<(String, String)> = const { RefCell::new((String::new(), String::new())) };
}

impl<S: Subscriber> Layer<S> for TerminalLayer {
    fn on_event(&self, event: &Event<'_>, _context: Context<'_, S>) {
        if !Self::wants(event.metadata()) {
            return;
        }
        LINE.with(|buffers| {
            let (line, fields) = &mut *buffers.borrow_mut();
            format_event(event, &self.prefix, line, fields);
            // Nothing to do if the terminal is gone.
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        });
    }
}
