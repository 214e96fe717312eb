//! oslo.config INI files (`neutron.conf`, `l3_agent.ini`) read as oslo's
//! own parser reads them, so that the agent takes the files Neutron's
//! agent takes, with the same meaning.
//!
//! Syntax (oslo's `iniparser`): `[section]`; `key = value` or
//! `key: value` (split at the first `=` or `:`); lines starting with `#`
//! or `;` are comments; a line indented by a space or tab continues the
//! previous value (joined with a newline) and a blank line ends it; a
//! value is stripped, and one pair of matching quotes around the whole of
//! its first line is dropped. Section names other than `DEFAULT` are case
//! insensitive (`[AGENT]` is `[agent]`); keys are not.
//!
//! Several files: a later one overrides an earlier one key by key, and a
//! key given twice in one file takes its last value (xrouter reads no
//! multi-valued option). Every value keeps its file and line, so messages
//! can name them.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::text::{self, quote};

/// The name oslo gives the section of options without a group.
pub const DEFAULT: &str = "DEFAULT";

/// A value as a file gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The value: stripped, unquoted, continuation lines joined by `\n`;
    /// `$name` not yet substituted.
    pub value: String,
    /// The file that gave it.
    pub file: Arc<Path>,
    /// Its line there (of the key, for a value on several lines).
    pub line: usize,
}

/// The values of one or more INI files, the later files' on top.
#[derive(Clone, Debug, Default)]
pub struct Ini {
    /// Normalized section name -> key -> the value that wins.
    sections: BTreeMap<String, BTreeMap<String, Entry>>,
    /// The files read, in order.
    files: Vec<PathBuf>,
}

/// A section's name as oslo looks it up: `DEFAULT` as it is, any other
/// lowercased.
pub fn normalize_section(name: &str) -> String {
    if name == DEFAULT {
        name.to_string()
    } else {
        name.to_lowercase()
    }
}

impl Ini {
    /// Reads `files` in order, each on top of the ones before. A file that
    /// cannot be read or has a syntax error is an error naming it (and the
    /// line).
    pub fn read(files: &[PathBuf]) -> anyhow::Result<Ini> {
        let mut ini = Ini::default();
        for f in files {
            let content = std::fs::read_to_string(f)
                .map_err(|e| anyhow::anyhow!("{}: {e}", text::path(f)))?;
            ini.add(&content, f)?;
        }
        Ok(ini)
    }

    /// Adds the values of one file's `content`, read from `file`, on top
    /// of those already read.
    pub fn add(&mut self, content: &str, file: &Path) -> anyhow::Result<()> {
        // A byte order mark, as some editors write: not part of line 1.
        let content = content.strip_prefix('\u{feff}').unwrap_or(content);
        let origin: Arc<Path> = Arc::from(file);
        let parsed = parse(content).map_err(|(line, problem, text)| {
            anyhow::anyhow!(
                "{}: line {line}: {problem}: {}",
                text::path(file),
                quote(text)
            )
        })?;
        for (section, key, line, value) in parsed {
            self.sections
                .entry(normalize_section(&section))
                .or_default()
                .insert(
                    key,
                    Entry {
                        value,
                        file: origin.clone(),
                        line,
                    },
                );
        }
        self.files.push(file.to_path_buf());
        Ok(())
    }

    /// The files read, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The value of `key` in `section` (any case but `DEFAULT`), if a
    /// file sets it.
    pub fn get(&self, section: &str, key: &str) -> Option<&Entry> {
        self.sections.get(&normalize_section(section))?.get(key)
    }

    /// The keys `section` sets across all files, with their values, by
    /// key.
    pub fn section(&self, section: &str) -> impl Iterator<Item = (&str, &Entry)> {
        self.sections
            .get(&normalize_section(section))
            .into_iter()
            .flat_map(|m| m.iter().map(|(k, e)| (k.as_str(), e)))
    }

    /// `value`, read as `key` of `section`, with `$name` and `${name}`
    /// replaced as oslo.config replaces them: by the value of option
    /// `name` of the same section, else of `[DEFAULT]` (`group.name` for
    /// one of another section), itself substituted; `$$` and `\$` are a
    /// `$`, and a `$` not followed by a name is left as it is. A name is
    /// looked up in the files, then in `defaults` (section, key) (the
    /// defaults of the options the caller knows). A name neither gives, or
    /// a reference back to a value being substituted, is an error.
    pub fn substitute(
        &self,
        section: &str,
        key: &str,
        value: &str,
        defaults: &dyn Fn(&str, &str) -> Option<String>,
    ) -> Result<String, String> {
        let mut stack = vec![(normalize_section(section), key.to_string())];
        self.expand(value, &mut stack, defaults)
    }

    fn expand(
        &self,
        value: &str,
        stack: &mut Vec<(String, String)>,
        defaults: &dyn Fn(&str, &str) -> Option<String>,
    ) -> Result<String, String> {
        // oslo reads `\$` as `$$`, the template's escaped dollar.
        let value = value.replace("\\$", "$$");
        let mut out = String::new();
        let mut rest = value.as_str();
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(r) = after.strip_prefix('$') {
                out.push('$');
                rest = r;
                continue;
            }
            let (name, r) = match after.strip_prefix('{') {
                Some(b) => match template_name(b) {
                    Some(n) if b[n.len()..].starts_with('}') => (n, &b[n.len() + 1..]),
                    _ => ("", after),
                },
                None => match template_name(after) {
                    Some(n) => (n, &after[n.len()..]),
                    None => ("", after),
                },
            };
            if name.is_empty() {
                // Not a reference: the `$` stays (oslo's safe_substitute).
                out.push('$');
                rest = after;
                continue;
            }
            out.push_str(&self.lookup(name, stack, defaults)?);
            rest = r;
        }
        out.push_str(rest);
        Ok(out)
    }

    /// The substituted value `$name` stands for, read in the section on
    /// top of `stack`.
    fn lookup(
        &self,
        name: &str,
        stack: &mut Vec<(String, String)>,
        defaults: &dyn Fn(&str, &str) -> Option<String>,
    ) -> Result<String, String> {
        let here = stack.last().map(|(s, _)| s.clone()).unwrap_or_default();
        let candidates: Vec<(String, String)> = match name.split_once('.') {
            Some((group, opt)) => vec![(normalize_section(group), opt.to_string())],
            None if here == DEFAULT => vec![(here, name.to_string())],
            None => vec![(here, name.to_string()), (DEFAULT.into(), name.to_string())],
        };
        for (section, opt) in candidates {
            let raw = match self.get(&section, &opt) {
                Some(e) => e.value.clone(),
                None => match defaults(&section, &opt) {
                    Some(d) => d,
                    None => continue,
                },
            };
            let at = (section, opt);
            if let Some(i) = stack.iter().position(|s| *s == at) {
                let mut chain: Vec<String> = stack[i..].iter().map(shown_name).collect();
                chain.push(shown_name(&at));
                return Err(format!(
                    "${name} refers back to itself ({})",
                    chain.join(" -> ")
                ));
            }
            stack.push(at);
            let v = self.expand(&raw, stack, defaults);
            stack.pop();
            return v;
        }
        Err(format!(
            "${name} names no option the files set or xrouter knows (write $$ for a $)"
        ))
    }
}

/// `[section] key` as the substitution chain shows it.
fn shown_name((section, key): &(String, String)) -> String {
    format!("[{section}] {key}")
}

/// The name at the start of `s` as oslo's template reads one
/// (`[_a-z][._a-z0-9]*`, any case), if any.
fn template_name(s: &str) -> Option<&str> {
    let first = s.bytes().next()?;
    if !(first == b'_' || first.is_ascii_alphabetic()) {
        return None;
    }
    let len = s
        .bytes()
        .position(|b| !(b == b'_' || b == b'.' || b.is_ascii_alphanumeric()))
        .unwrap_or(s.len());
    Some(&s[..len])
}

/// A file's assignments in order: (section as written, key, line, value),
/// or the line number, problem and text of its first syntax error.
type Assignments = Vec<(String, String, usize, String)>;

fn parse(content: &str) -> Result<Assignments, (usize, &'static str, &str)> {
    let mut out = Vec::new();
    let mut section: Option<String> = None;
    // The assignment being read: key, its line, its value's lines.
    let mut pending: Option<(String, usize, Vec<String>)> = None;
    let lines: Vec<&str> = content.lines().collect();
    // Ends the assignment being read; one outside any section is an error
    // at its key's line.
    let flush = |pending: &mut Option<(String, usize, Vec<String>)>,
                 section: &Option<String>,
                 out: &mut Assignments| {
        if let Some((key, line, value)) = pending.take() {
            let Some(s) = section else {
                return Err((
                    line,
                    "a section must be started before an assignment",
                    lines[line - 1].trim_end(),
                ));
            };
            out.push((s.clone(), key, line, value.join("\n")));
        }
        Ok(())
    };
    for (i, raw) in lines.iter().enumerate() {
        let n = i + 1;
        let line = raw.trim_end();
        if line.is_empty() {
            // A blank line ends a value of several lines.
            flush(&mut pending, &section, &mut out)?;
            continue;
        }
        if line.starts_with([' ', '\t']) {
            match &mut pending {
                Some((_, _, value)) => value.push(line.trim_start().to_string()),
                None => return Err((n, "unexpected continuation line", line)),
            }
            continue;
        }
        flush(&mut pending, &section, &mut out)?;
        if line.starts_with('[') {
            if !line.ends_with(']') {
                return Err((n, "invalid section (must end with ])", line));
            }
            if line.len() <= 2 {
                return Err((n, "empty section name", line));
            }
            section = Some(line[1..line.len() - 1].to_string());
        } else if line.starts_with(['#', ';']) {
            // A comment.
        } else {
            let split = match (line.find('='), line.find(':')) {
                (Some(e), Some(c)) => e.min(c),
                (Some(e), None) => e,
                (None, Some(c)) => c,
                (None, None) => return Err((n, "no '=' or ':' in assignment", line)),
            };
            let key = line[..split].trim();
            if key.is_empty() {
                return Err((n, "empty key", line));
            }
            let mut value = line[split + 1..].trim();
            if value.len() >= 2
                && value.starts_with(['"', '\''])
                && value.as_bytes()[0] == value.as_bytes()[value.len() - 1]
            {
                value = &value[1..value.len() - 1];
            } else if value == "\"" || value == "'" {
                // oslo's test: the first and last character are one quote.
                value = "";
            }
            pending = Some((key.to_string(), n, vec![value.to_string()]));
        }
    }
    flush(&mut pending, &section, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ini(files: &[(&str, &str)]) -> Ini {
        let mut ini = Ini::default();
        for (name, content) in files {
            ini.add(content, Path::new(name)).unwrap();
        }
        ini
    }

    fn value(ini: &Ini, section: &str, key: &str) -> Option<String> {
        ini.get(section, key).map(|e| e.value.clone())
    }

    #[test]
    fn later_files_override_earlier_ones_key_by_key() {
        let i = ini(&[
            (
                "neutron.conf",
                "[DEFAULT]\nhost = a\ndebug = true\n[AGENT]\nreport_interval = 10\n",
            ),
            (
                "l3_agent.ini",
                "[DEFAULT]\nhost = b\n[agent]\nreport_interval=5\n",
            ),
        ]);
        assert_eq!(value(&i, DEFAULT, "host").as_deref(), Some("b"));
        assert_eq!(value(&i, DEFAULT, "debug").as_deref(), Some("true"));
        // [AGENT] and [agent] are one section; the later file wins.
        let e = i.get("AGENT", "report_interval").unwrap();
        assert_eq!(
            (e.value.as_str(), &*e.file, e.line),
            ("5", Path::new("l3_agent.ini"), 4)
        );
        assert_eq!(
            i.files(),
            [PathBuf::from("neutron.conf"), PathBuf::from("l3_agent.ini")]
        );
        // [default] is not [DEFAULT] for oslo.
        let i = ini(&[("f", "[default]\nhost = x\n")]);
        assert_eq!(value(&i, DEFAULT, "host"), None);
    }

    #[test]
    fn comments_continuations_quotes_and_repeats_as_oslo_reads_them() {
        let i = ini(&[(
            "f",
            "# comment\n; another\n[DEFAULT]\na = one\n  two\n\tthree\n\nb: x = y \n\
             c = \"quoted\"\nd = 'half\ne = \"mixed'\nf = one\nf = two\ng =\nh = \"\n\
             k = \"a\n  b\"\n[s]\n# a = no\nurl = rabbit://u:p@h:5672/\n",
        )]);
        assert_eq!(value(&i, DEFAULT, "a").as_deref(), Some("one\ntwo\nthree"));
        // Split at the first of '=' and ':'.
        assert_eq!(value(&i, DEFAULT, "b").as_deref(), Some("x = y"));
        assert_eq!(value(&i, DEFAULT, "c").as_deref(), Some("quoted"));
        assert_eq!(value(&i, DEFAULT, "d").as_deref(), Some("'half"));
        assert_eq!(value(&i, DEFAULT, "e").as_deref(), Some("\"mixed'"));
        assert_eq!(value(&i, DEFAULT, "f").as_deref(), Some("two"));
        assert_eq!(value(&i, DEFAULT, "g").as_deref(), Some(""));
        assert_eq!(value(&i, DEFAULT, "h").as_deref(), Some(""));
        // Only the first line's quotes are looked at (oslo's too).
        assert_eq!(value(&i, DEFAULT, "k").as_deref(), Some("\"a\nb\""));
        assert_eq!(value(&i, "s", "a"), None);
        assert_eq!(
            value(&i, "S", "url").as_deref(),
            Some("rabbit://u:p@h:5672/")
        );
        let keys: Vec<&str> = i.section("s").map(|(k, _)| k).collect();
        assert_eq!(keys, ["url"]);
    }

    /// A byte order mark at the start (some editors write one) is not
    /// part of the first line.
    #[test]
    fn a_byte_order_mark_is_skipped() {
        let i = ini(&[("f", "\u{feff}[DEFAULT]\nhost = a\n")]);
        assert_eq!(value(&i, DEFAULT, "host").as_deref(), Some("a"));
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        for (content, line, what) in [
            ("[DEFAULT]\na = 1\n  \n  b\n", 4, "unexpected continuation"),
            ("[DEFAULT\n", 1, "must end with ]"),
            ("[]\n", 1, "empty section name"),
            ("[DEFAULT]\n\njust words\n", 3, "no '=' or ':'"),
            ("[DEFAULT]\n= 1\n", 2, "empty key"),
            ("# top\na = 1\n", 2, "section must be started"),
            ("[DEFAULT]\n# c\n  x = 1\n", 3, "unexpected continuation"),
        ] {
            let e = Ini::default()
                .add(content, Path::new("/etc/neutron/l3_agent.ini"))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("/etc/neutron/l3_agent.ini: line {line}: "))
                    && e.contains(what),
                "{content:?}: {e}"
            );
        }
        let e = Ini::read(&[PathBuf::from("/nonexistent/neutron.conf")])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/nonexistent/neutron.conf: "), "{e}");
    }

    fn no_defaults(section: &str, key: &str) -> Option<String> {
        (section == DEFAULT && key == "state_path").then(|| "/var/lib/neutron".into())
    }

    #[test]
    fn substitution_as_oslo_does_it() {
        let i = ini(&[(
            "f",
            "[DEFAULT]\nhost = node1\nbase = $state_path/x\n[agent]\nhost = agent-host\n\
             [other]\nv = 1\n",
        )]);
        let sub = |section: &str, v: &str| i.substitute(section, "k", v, &no_defaults);
        assert_eq!(
            sub(DEFAULT, "$state_path/metadata_proxy").unwrap(),
            "/var/lib/neutron/metadata_proxy"
        );
        assert_eq!(sub(DEFAULT, "${host}-a").unwrap(), "node1-a");
        // The section's own option first, then [DEFAULT]'s.
        assert_eq!(
            sub("AGENT", "$host/$base").unwrap(),
            "agent-host//var/lib/neutron/x"
        );
        assert_eq!(sub(DEFAULT, "$other.v ${OTHER.v}").unwrap(), "1 1");
        assert_eq!(
            sub(DEFAULT, "$$host \\$host $ $1 ${ x").unwrap(),
            "$host $host $ $1 ${ x"
        );
        let e = sub(DEFAULT, "$nope/x").unwrap_err();
        assert!(e.contains("$nope names no option"), "{e}");
        let i = ini(&[("f", "[DEFAULT]\na = $b\nb = ${a}\n")]);
        let e = i.substitute(DEFAULT, "a", "$b", &no_defaults).unwrap_err();
        assert!(
            e.contains("refers back to itself ([DEFAULT] a -> [DEFAULT] b -> [DEFAULT] a)"),
            "{e}"
        );
    }
}
