//! What the command line prints, and how.

use anyhow::Context as _;

/// Writes `args` to standard output. A closed standard output
/// (`xrouter show | head`) is not an error: what is left to print is
/// dropped, and the command finishes what it was doing (the demo still
/// removes its sandbox) and exits as it would have. Any other write error
/// (say a full disk) is returned.
pub fn stdout(args: std::fmt::Arguments) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut o = std::io::stdout().lock();
    match o.write_fmt(args).and_then(|()| o.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to standard output"),
    }
}

/// Writes `args` and a newline to standard error, ignoring any error: a
/// message that cannot be shown must not turn into a panic.
pub fn stderr(args: std::fmt::Arguments) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}

/// `print!` through [`stdout`]: a closed standard output is not an error.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::stdout(format_args!($($arg)*)) };
}

/// `println!` through [`stdout`]: a closed standard output is not an error.
#[macro_export]
macro_rules! outln {
    () => { $crate::cli::stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cli::stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `eprintln!` through [`stderr`]: never panics.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => { $crate::cli::stderr(format_args!($($arg)*)) };
}
