//! Values shown in messages. Whatever the input, a message stays one line of
//! reasonable length: control characters and quotes are escaped (a newline
//! in an ID must not start what looks like another log line) and long values
//! are cut (a 1 MB value must not be echoed whole).

use std::fmt::Write as _;

/// Characters of a value a message shows before cutting it.
pub const SHOWN_CHARS: usize = 64;

/// Longest identifier or path shown without quotes by [`label`].
const LABEL_BYTES: usize = 255;

/// `s` escaped (control characters, quotes, backslashes, invisible
/// characters) and cut after [`SHOWN_CHARS`] characters, without quotes.
/// Returns the text and whether it was cut.
fn escape_cut(s: &str) -> (String, bool) {
    let mut out = String::new();
    let mut chars = s.chars();
    for c in chars.by_ref().take(SHOWN_CHARS) {
        out.extend(c.escape_debug());
    }
    let cut = chars.next().is_some();
    if cut {
        out.push('…');
    }
    (out, cut)
}

/// A value as messages show it: in double quotes, escaped, and cut after
/// 64 characters with its full length, e.g. `"aaaa…" (1048576 bytes)`.
pub fn quote(s: &str) -> String {
    let (shown, cut) = escape_cut(s);
    let mut out = format!("\"{shown}\"");
    if cut {
        let _ = write!(out, " ({} bytes)", s.len());
    }
    out
}

/// An identifier or path as messages show it: as it is when it is a plain
/// token (ASCII letters, digits and `-_.:/@+=,`, at most 255 bytes), so
/// `router 9c94...: field ...` reads as before; otherwise [`quote`]d.
pub fn label(s: &str) -> String {
    let plain = !s.is_empty()
        && s.len() <= LABEL_BYTES
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/@+=,".contains(&b));
    if plain { s.to_string() } else { quote(s) }
}

/// A path as messages show it (see [`label`]).
pub fn path(p: &std::path::Path) -> String {
    label(&p.to_string_lossy())
}

/// For values inside another tool's own quotes (clap's `'...'`): escaped
/// and cut like [`quote`], the length noted inside.
pub fn bare(s: &str) -> String {
    let (shown, cut) = escape_cut(s);
    if cut {
        format!("{shown} ({} bytes)", s.len())
    } else {
        shown
    }
}

/// Another library's message (serde, toml) made safe to show: control
/// characters escaped and every run quoted in `"..."` or `` `...` `` (where
/// those libraries put the input they echo) cut like [`quote`]; the whole
/// at most a few hundred characters.
pub fn tidy(msg: &str) -> String {
    const MAX: usize = 600;
    let chars: Vec<char> = msg.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '`' {
            // Find the closing delimiter (serde escapes `"` inside `"...").
            let mut j = i + 1;
            while j < chars.len() && chars[j] != c {
                if c == '"' && chars[j] == '\\' {
                    j += 1;
                }
                j += 1;
            }
            if j < chars.len() {
                let inner = &chars[i + 1..j];
                out.push(c);
                for &ch in inner.iter().take(SHOWN_CHARS) {
                    push_visible(&mut out, ch);
                }
                out.push(c);
                if inner.len() > SHOWN_CHARS {
                    out.pop();
                    out.push('…');
                    out.push(c);
                    let bytes: usize = inner.iter().map(|ch| ch.len_utf8()).sum();
                    let _ = write!(out, " ({bytes} bytes)");
                }
                i = j + 1;
                continue;
            }
        }
        push_visible(&mut out, c);
        i += 1;
    }
    if out.chars().count() > MAX {
        let n = out.len();
        out = out.chars().take(MAX).collect();
        let _ = write!(out, "… ({n} bytes)");
    }
    out
}

/// Pushes `c`, escaped if it is a control or invisible character.
fn push_visible(out: &mut String, c: char) {
    if c.is_control() || c.escape_debug().count() > 1 && !matches!(c, '"' | '\'' | '\\') {
        out.extend(c.escape_debug());
    } else {
        out.push(c);
    }
}

/// `n` things in words: "no changes", "1 change", "2 changes" (`what` is
/// the singular; the plural adds an s).
pub fn count(n: usize, what: &str) -> String {
    match n {
        0 => format!("no {what}s"),
        1 => format!("1 {what}"),
        n => format!("{n} {what}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_in_words() {
        assert_eq!(count(0, "change"), "no changes");
        assert_eq!(count(1, "router"), "1 router");
        assert_eq!(count(12, "router"), "12 routers");
    }

    #[test]
    fn quote_escapes_control_characters_and_quotes() {
        assert_eq!(quote("a\nb"), r#""a\nb""#);
        assert_eq!(quote("say \"hi\"\t\0"), r#""say \"hi\"\t\0""#);
        // A bidi override could make a log line read differently.
        assert_eq!(quote("x\u{202e}y"), r#""x\u{202e}y""#);
        assert_eq!(quote("é"), "\"é\"");
        assert!(!quote("a\r\nb\u{1b}[2J").contains(['\n', '\r', '\u{1b}']));
    }

    #[test]
    fn quote_cuts_long_values_and_says_how_long_they_were() {
        let big = "x".repeat(1 << 20);
        let q = quote(&big);
        assert_eq!(q, format!("\"{}…\" (1048576 bytes)", "x".repeat(64)));
        assert_eq!(quote(&"y".repeat(64)), format!("\"{}\"", "y".repeat(64)));
        // Cut on a character boundary.
        let q = quote(&"é".repeat(100));
        assert!(q.starts_with(&format!("\"{}…\"", "é".repeat(64))), "{q}");
    }

    #[test]
    fn label_leaves_plain_tokens_alone() {
        assert_eq!(
            label("9c9436d4-2b7c-4a1e-9d8f-0123456789ab"),
            "9c9436d4-2b7c-4a1e-9d8f-0123456789ab"
        );
        assert_eq!(label("/etc/xrouter/node.toml"), "/etc/xrouter/node.toml");
        assert_eq!(label("r1\nrouter r2"), r#""r1\nrouter r2""#);
        assert_eq!(label(""), r#""""#);
        assert_eq!(label("a b"), r#""a b""#);
    }

    #[test]
    fn tidy_escapes_and_cuts_what_other_libraries_echo() {
        let big = "z".repeat(100_000);
        let m = tidy(&format!("invalid type: string \"{big}\", expected u32"));
        assert_eq!(
            m,
            format!(
                "invalid type: string \"{}…\" (100000 bytes), expected u32",
                "z".repeat(64)
            )
        );
        let m = tidy("unknown field `a\nb`, expected one of `x`");
        assert_eq!(m, r"unknown field `a\nb`, expected one of `x`");
        assert_eq!(tidy(r#"string "a\"b""#), r#"string "a\"b""#);
        let m = tidy(&"w".repeat(5000));
        assert!(m.len() < 700 && m.ends_with("(5000 bytes)"), "{m}");
    }

    #[test]
    fn bare_is_quote_without_the_quotes() {
        assert_eq!(bare("a\nb"), r"a\nb");
        assert_eq!(
            bare(&"q".repeat(70)),
            format!("{}… (70 bytes)", "q".repeat(64))
        );
    }
}
