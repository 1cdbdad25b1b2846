//! The library's logs, handed to the host: a process-wide callback with a
//! level filter (the C and C++ faces wrap it; TDLib's and rustls-ffi's log
//! callbacks are the models). Until one is set the library's `tracing`
//! lines go nowhere — nothing is printed to stderr — unless the host
//! installed a `tracing` subscriber of its own.
//!
//! It is a minimal `tracing::Subscriber`, installed as the global default
//! at the first [`set_log_sink`]: events only (the library opens no spans),
//! formatted as `message key=value ...`. The callback may run on any thread
//! (the library's, or the caller's during an API call) and must be quick; a
//! line it logs itself is dropped rather than recursing.

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

/// Receives one log line: level, target (the module, e.g.
/// `chatxfer::engine`) and text.
pub type LogSink = Arc<dyn Fn(Level, &str, &str) + Send + Sync>;

static SINK: RwLock<Option<LogSink>> = RwLock::new(None);
/// The most verbose level passed on: 0 = off, 1 = error ... 5 = trace.
static MAX: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: OnceLock<bool> = OnceLock::new();

thread_local! {
    /// Set while this thread runs the sink: its own lines are dropped.
    static IN_SINK: Cell<bool> = const { Cell::new(false) };
}

/// Could not become the process's `tracing` subscriber.
#[derive(Debug, thiserror::Error)]
#[error("the process already has a global tracing subscriber; the library's logs go to it")]
pub struct LogError;

fn rank(level: Level) -> usize {
    match level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

/// Sends the library's lines up to `max` (`None`: none) to `sink`;
/// `sink` `None` stops them. Replaces an earlier sink.
pub fn set_log_sink(max: Option<Level>, sink: Option<LogSink>) -> Result<(), LogError> {
    let installed =
        *INSTALLED.get_or_init(|| tracing::subscriber::set_global_default(Forwarder).is_ok());
    if !installed {
        return Err(LogError);
    }
    let max = match (&sink, max) {
        (Some(_), Some(level)) => rank(level),
        _ => 0,
    };
    *SINK.write().unwrap_or_else(|e| e.into_inner()) = sink;
    MAX.store(max, Ordering::SeqCst);
    // Callsites cache whether they are enabled; the level changed.
    tracing::callsite::rebuild_interest_cache();
    Ok(())
}

struct Forwarder;

impl Subscriber for Forwarder {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // The filter changes at run time: ask `enabled` every time.
        Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        rank(*metadata.level()) <= MAX.load(Ordering::Relaxed)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        use tracing::level_filters::LevelFilter;
        Some(match MAX.load(Ordering::Relaxed) {
            0 => LevelFilter::OFF,
            1 => LevelFilter::ERROR,
            2 => LevelFilter::WARN,
            3 => LevelFilter::INFO,
            4 => LevelFilter::DEBUG,
            _ => LevelFilter::TRACE,
        })
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        if IN_SINK.with(Cell::get) {
            return;
        }
        let Some(sink) = SINK.read().unwrap_or_else(|e| e.into_inner()).clone() else {
            return;
        };
        let mut line = Line::default();
        event.record(&mut line);
        let meta = event.metadata();
        IN_SINK.with(|f| f.set(true));
        // A panicking sink loses the line, never the caller.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sink(*meta.level(), meta.target(), &line.text())
        }));
        IN_SINK.with(|f| f.set(false));
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// `message key=value ...` of one event.
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl Line {
    fn text(self) -> String {
        if self.fields.is_empty() {
            self.message
        } else if self.message.is_empty() {
            self.fields.trim_start().to_string()
        } else {
            self.message + &self.fields
        }
    }
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}
