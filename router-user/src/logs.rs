//! Where the log goes: the terminal (standard error, as text), or, under
//! systemd, the journal, where each event's fields become journal fields
//! (`router = %id` is `ROUTER=<id>`: `journalctl -u xrouter ROUTER=<id>`).

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::{
    Layer as _,
    field::RecordFields,
    fmt::{FormatFields, format::Writer},
    layer::SubscriberExt as _,
    util::SubscriberInitExt as _,
};

/// Sets the process's log up: `XROUTER_LOG` filters (default `info`); the
/// journal when standard error is the journal's stream, else text.
pub fn init() {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("XROUTER_LOG")
            // lapin logs its own reconnection attempts as errors (and claims
            // to give up while the agent goes on retrying): the agent says
            // what happens to the message bus itself.
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,lapin=off"))
    };
    if stderr_is_journal()
        && let Ok(journal) = tracing_journald::layer()
    {
        // Fields as they are named (ROUTER, not the default F_ROUTER).
        let journal = journal.with_field_prefix(None);
        tracing_subscriber::registry()
            .with(journal.with_filter(filter()))
            .init();
        return;
    }
    // Colours only for a terminal: a log file gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .fmt_fields(Text)
        .init();
}

/// Whether standard error is the journal's stream: systemd sets
/// `JOURNAL_STREAM` to its device and inode (a child whose standard
/// error was redirected elsewhere inherits the variable, not the stream).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let Ok(meta) = std::fs::File::open("/proc/self/fd/2").and_then(|f| f.metadata()) else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// The terminal's text of an event's fields: the message, then `key=value`
/// for the other fields, but not `router`, which every message carrying it
/// already names ("router <id>: ...").
struct Text;

impl<'w> FormatFields<'w> for Text {
    fn format_fields<R: RecordFields>(&self, mut w: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = TextVisitor {
            w: &mut w,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

struct TextVisitor<'a, 'w> {
    w: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visit for TextVisitor<'_, '_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() || field.name() == "router" {
            return;
        }
        let sep = if self.first { "" } else { " " };
        self.first = false;
        self.result = if field.name() == "message" {
            write!(self.w, "{sep}{value:?}")
        } else {
            write!(self.w, "{sep}{}={value:?}", field.name())
        };
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_terminal_leaves_the_router_field_to_the_message() {
        let buf = Buf::default();
        let out = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_ansi(false)
            .with_target(false)
            .without_time()
            .fmt_fields(Text)
            .finish();
        tracing::subscriber::with_default(sub, || {
            let id = "5c7ef3a1";
            tracing::error!(router = %id, "router {id}: apply failed");
            tracing::warn!(router = %id, dev = "qg-1", round = 2, "router {id}: no answer");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "ERROR router 5c7ef3a1: apply failed\n \
             WARN router 5c7ef3a1: no answer dev=\"qg-1\" round=2\n"
        );
    }
}
