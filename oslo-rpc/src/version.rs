//! RPC API versions ("major.minor[.revision]") and oslo's compatibility
//! rule: a server at X.Y serves a request for X.Z when Z <= Y.

/// Whether a server implementing `have` serves a request for `want`.
/// Unparsable versions are never compatible.
pub fn compatible(have: &str, want: &str) -> bool {
    match (parse(have), parse(want)) {
        (Some(h), Some(w)) => h.0 == w.0 && (w.1, w.2) <= (h.1, h.2),
        _ => false,
    }
}

fn parse(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let major = it.next()??;
    let minor = it.next().unwrap_or(Some(0))?;
    let rev = it.next().unwrap_or(Some(0))?;
    if it.next().is_some() {
        return None;
    }
    Some((major, minor, rev))
}

#[cfg(test)]
mod tests {
    use super::compatible;

    #[test]
    fn same_major_and_no_newer_minor() {
        assert!(compatible("1.4", "1.0"));
        assert!(compatible("1.4", "1.4"));
        assert!(compatible("1.4", "1"));
        assert!(!compatible("1.4", "1.5"));
        assert!(!compatible("1.4", "2.0"));
        assert!(!compatible("2.0", "1.0"));
        assert!(compatible("1.4.1", "1.4"));
        assert!(!compatible("1.4", "1.4.1"));
        assert!(!compatible("1.4", "x"));
        assert!(!compatible("1.4", "1.2.3.4"));
    }
}
