//! The packet an operator asks about, as a one-line spec
//! (`tcp 10.0.1.10:40000 -> 8.8.8.8:443 [flags S]`) or a whole frame in
//! hex, and the Ethernet frame built from a spec.
//!
//! Grammar (tokens separated by spaces; `->`, `[`, `]` and `,` stand alone
//! even when written against a neighbour):
//!
//! ```text
//! tcp|udp ADDRESS:PORT -> ADDRESS:PORT [OPTION, ...]
//! icmp    ADDRESS      -> ADDRESS      [OPTION, ...]
//! OPTION: flags LETTERS (S A F R P U; tcp) | echo id N | echo-reply id N | id N (icmp)
//!         | ttl N | len N | df | no-df | from MAC | to MAC
//! ```

use std::{fmt, net::Ipv4Addr};

use super::frame::{self, PROTO_ICMP, PROTO_TCP, PROTO_UDP};

/// TCP flag letters, in the order they are printed.
pub const TCP_FLAG_LETTERS: [(char, u8); 6] = [
    ('F', 0x01),
    ('S', 0x02),
    ('R', 0x04),
    ('P', 0x08),
    ('A', 0x10),
    ('U', 0x20),
];

pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_ECHO_REPLY: u8 = 0;

/// Source MAC of a spec's frame unless `from` gives one: locally
/// administered, so it is nobody's.
pub const DEFAULT_SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const DEFAULT_TTL: u8 = 64;
/// Payload bytes of a spec's frame unless `len` says otherwise.
const DEFAULT_PAYLOAD: usize = 16;

/// A packet described by a spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub proto: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// TCP/UDP ports; for ICMP echo both are the id.
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub ttl: u8,
    /// IPv4 total length (None: headers and a small payload).
    pub len: Option<u16>,
    pub df: bool,
    pub src_mac: [u8; 6],
    /// None: the ingress port's MAC, as a host sends to its router.
    pub dst_mac: Option<[u8; 6]>,
}

/// Why a spec does not parse: the token, where it is, what was expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    /// The offending token ("" at the end of the spec).
    pub token: String,
    /// Its 1-based column in the spec.
    pub column: usize,
    pub expected: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.token.is_empty() {
            write!(f, "the spec ends too early: expected {}", self.expected)
        } else {
            write!(
                f,
                "{} at column {}: expected {}",
                crate::text::quote(&self.token),
                self.column,
                self.expected
            )
        }
    }
}

impl std::error::Error for SpecError {}

#[derive(Clone, Debug)]
struct Token {
    text: String,
    column: usize,
}

fn tokenize(s: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut start = 0;
    let chars: Vec<char> = s.chars().collect();
    let flush = |cur: &mut String, start: usize, out: &mut Vec<Token>| {
        if !cur.is_empty() {
            out.push(Token {
                text: std::mem::take(cur),
                column: start + 1,
            });
        }
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            flush(&mut cur, start, &mut out);
        } else if c == '-' && chars.get(i + 1) == Some(&'>') {
            flush(&mut cur, start, &mut out);
            out.push(Token {
                text: "->".into(),
                column: i + 1,
            });
            i += 1;
        } else if matches!(c, '[' | ']' | ',') {
            flush(&mut cur, start, &mut out);
            out.push(Token {
                text: c.to_string(),
                column: i + 1,
            });
        } else {
            if cur.is_empty() {
                start = i;
            }
            cur.push(c);
        }
        i += 1;
    }
    flush(&mut cur, start, &mut out);
    out
}

struct Tokens {
    toks: Vec<Token>,
    at: usize,
    /// Column just past the spec, for "ends too early".
    end: usize,
}

impl Tokens {
    fn next(&mut self, expected: &str) -> Result<Token, SpecError> {
        match self.toks.get(self.at) {
            Some(t) => {
                self.at += 1;
                Ok(t.clone())
            }
            None => Err(SpecError {
                token: String::new(),
                column: self.end,
                expected: expected.into(),
            }),
        }
    }

    fn peek(&self) -> Option<&str> {
        self.toks.get(self.at).map(|t| t.text.as_str())
    }
}

fn bad(t: &Token, expected: &str) -> SpecError {
    SpecError {
        token: t.text.clone(),
        column: t.column,
        expected: expected.into(),
    }
}

fn address(t: &Token, expected: &str) -> Result<Ipv4Addr, SpecError> {
    t.text.parse().map_err(|_| bad(t, expected))
}

fn number<T: std::str::FromStr>(t: &Token, expected: &str) -> Result<T, SpecError> {
    if !t.text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(t, expected));
    }
    t.text.parse().map_err(|_| bad(t, expected))
}

/// `ADDRESS:PORT` (TCP, UDP) or `ADDRESS` (ICMP).
fn endpoint(t: &Token, with_port: bool, side: &str) -> Result<(Ipv4Addr, u16), SpecError> {
    if !with_port {
        if t.text.contains(':') {
            return Err(bad(
                t,
                &format!(
                    "the {side} IPv4 address alone (icmp has no ports; its id is an option: [echo id N])"
                ),
            ));
        }
        return Ok((address(t, &format!("the {side} IPv4 address"))?, 0));
    }
    let want = format!("the {side} as IPV4-ADDRESS:PORT (e.g. 10.0.1.10:40000)");
    let Some((a, p)) = t.text.rsplit_once(':') else {
        return Err(bad(t, &want));
    };
    let addr: Ipv4Addr = a.parse().map_err(|_| bad(t, &want))?;
    let port = Token {
        text: p.into(),
        column: t.column + a.chars().count() + 1,
    };
    let n: u16 = number(&port, &format!("a {side} port 1-65535"))?;
    if n == 0 {
        return Err(bad(&port, &format!("a {side} port 1-65535")));
    }
    Ok((addr, n))
}

fn mac(t: &Token) -> Result<[u8; 6], SpecError> {
    t.text
        .parse::<crate::model::Mac>()
        .map(|m| m.0)
        .map_err(|_| bad(t, "a MAC address (e.g. fa:16:3e:12:34:56)"))
}

fn tcp_flags(t: &Token) -> Result<u8, SpecError> {
    let mut f = 0;
    for c in t.text.chars() {
        let Some((_, bit)) = TCP_FLAG_LETTERS
            .iter()
            .find(|(l, _)| *l == c.to_ascii_uppercase())
        else {
            return Err(bad(
                t,
                "TCP flag letters among S A F R P U (e.g. S, SA, A, FA, R)",
            ));
        };
        f |= bit;
    }
    if t.text.is_empty() {
        return Err(bad(t, "TCP flag letters"));
    }
    Ok(f)
}

/// Parses a packet spec (see the module's grammar).
pub fn parse(s: &str) -> Result<Spec, SpecError> {
    let toks = tokenize(s);
    let end = s.chars().count() + 1;
    let mut t = Tokens { toks, at: 0, end };
    let p = t.next("a protocol: tcp, udp or icmp")?;
    let proto = match p.text.to_ascii_lowercase().as_str() {
        "tcp" => PROTO_TCP,
        "udp" => PROTO_UDP,
        "icmp" => PROTO_ICMP,
        _ => return Err(bad(&p, "a protocol: tcp, udp or icmp")),
    };
    let ports = proto != PROTO_ICMP;
    let src_want = if ports {
        "the source as IPV4-ADDRESS:PORT"
    } else {
        "the source IPv4 address"
    };
    let (src, sport) = endpoint(&t.next(src_want)?, ports, "source")?;
    let arrow = t.next("->")?;
    if arrow.text != "->" {
        return Err(bad(&arrow, "-> between source and destination"));
    }
    let dst_want = if ports {
        "the destination as IPV4-ADDRESS:PORT"
    } else {
        "the destination IPv4 address"
    };
    let (dst, dport) = endpoint(&t.next(dst_want)?, ports, "destination")?;
    let mut spec = Spec {
        proto,
        src,
        dst,
        sport,
        dport,
        tcp_flags: if proto == PROTO_TCP { 0x02 } else { 0 },
        icmp_type: if proto == PROTO_ICMP {
            ICMP_ECHO_REQUEST
        } else {
            0
        },
        ttl: DEFAULT_TTL,
        len: None,
        df: true,
        src_mac: DEFAULT_SRC_MAC,
        dst_mac: None,
    };
    if proto == PROTO_ICMP {
        spec.sport = 1;
        spec.dport = 1;
    }
    // Options: [ ... ] groups.
    const OPTIONS: &str = "an option: flags, echo, echo-reply, id, ttl, len, df, no-df, from, to";
    while t.peek().is_some() {
        let open_tok = t.next("[")?;
        if open_tok.text != "[" {
            return Err(bad(&open_tok, "[ to start options, or the end of the spec"));
        }
        loop {
            let o = t.next("an option or ]")?;
            match o.text.to_ascii_lowercase().as_str() {
                "]" => break,
                "," => continue,
                "flags" if proto == PROTO_TCP => {
                    spec.tcp_flags = tcp_flags(&t.next("TCP flag letters")?)?
                }
                "echo" | "echo-reply" | "id" if proto == PROTO_ICMP => {
                    match o.text.to_ascii_lowercase().as_str() {
                        "echo" => spec.icmp_type = ICMP_ECHO_REQUEST,
                        "echo-reply" => spec.icmp_type = ICMP_ECHO_REPLY,
                        _ => {}
                    }
                    if o.text.eq_ignore_ascii_case("id") || t.peek() == Some("id") {
                        if !o.text.eq_ignore_ascii_case("id") {
                            t.next("id")?;
                        }
                        let id: u16 = number(&t.next("an echo id 0-65535")?, "an echo id 0-65535")?;
                        spec.sport = id;
                        spec.dport = id;
                    }
                }
                "ttl" => {
                    spec.ttl = number(&t.next("a TTL 0-255")?, "a TTL 0-255")?;
                }
                "len" => {
                    let tok = t.next("an IPv4 total length")?;
                    let min = frame::headers_len(proto);
                    let n: u16 = number(&tok, &format!("an IPv4 total length {min}-65535"))?;
                    if (n as usize) < min {
                        return Err(bad(
                            &tok,
                            &format!("an IPv4 total length {min}-65535 (the headers take {min})"),
                        ));
                    }
                    spec.len = Some(n);
                }
                "df" => spec.df = true,
                "no-df" => spec.df = false,
                "from" => spec.src_mac = mac(&t.next("a MAC address")?)?,
                "to" => spec.dst_mac = Some(mac(&t.next("a MAC address")?)?),
                "flags" => {
                    return Err(bad(
                        &o,
                        "an icmp option (echo id N, echo-reply id N, ttl, len, df, no-df, from, to): flags are TCP's",
                    ));
                }
                "echo" | "echo-reply" | "id" => {
                    return Err(bad(
                        &o,
                        &format!(
                            "a {} option (ttl, len, df, no-df, from, to{}): echo ids are ICMP's",
                            frame::proto_name(proto),
                            if proto == PROTO_TCP { ", flags" } else { "" }
                        ),
                    ));
                }
                _ => return Err(bad(&o, OPTIONS)),
            }
        }
    }
    Ok(spec)
}

impl Spec {
    /// The Ethernet frame of this packet; `port_mac`: the destination MAC
    /// when the spec gives none. Checksums are correct.
    pub fn frame(&self, port_mac: [u8; 6]) -> Vec<u8> {
        let hdrs = frame::headers_len(self.proto);
        let total = self.len.map(usize::from).unwrap_or(hdrs + DEFAULT_PAYLOAD);
        let payload = vec![0u8; total - hdrs];
        frame::build(&frame::Build {
            dst_mac: self.dst_mac.unwrap_or(port_mac),
            src_mac: self.src_mac,
            src: self.src,
            dst: self.dst,
            ttl: self.ttl,
            df: self.df,
            proto: self.proto,
            sport: self.sport,
            dport: self.dport,
            tcp_flags: self.tcp_flags,
            icmp_type: self.icmp_type,
            payload: &payload,
        })
    }
}

/// A whole frame given in hex: pairs of hex digits, spaces, colons and a
/// leading `0x` allowed.
/// The shortest frame `--hex` takes.
const MIN_FRAME: usize = 34;

pub fn parse_hex(s: &str) -> Result<Vec<u8>, SpecError> {
    let t = s.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    let mut digits = Vec::new();
    for (i, c) in t.char_indices() {
        if c.is_ascii_hexdigit() {
            digits.push((i, c.to_digit(16).unwrap_or(0) as u8));
        } else if !(c.is_whitespace() || c == ':') {
            return Err(SpecError {
                token: c.to_string(),
                column: s.len() - t.len() + i + 1,
                expected: "hex digits (spaces and colons may separate bytes)".into(),
            });
        }
    }
    if digits.len() % 2 != 0 {
        return Err(SpecError {
            token: String::new(),
            column: s.len() + 1,
            expected: "an even number of hex digits (two per byte)".into(),
        });
    }
    let bytes: Vec<u8> = digits.chunks(2).map(|p| p[0].1 << 4 | p[1].1).collect();
    // The kernel's test run refuses shorter frames (EINVAL), and the data
    // path has nothing to say of them: it drops what holds no IPv4 header.
    if bytes.len() < MIN_FRAME {
        return Err(SpecError {
            token: String::new(),
            column: s.len() + 1,
            expected: format!(
                "a whole Ethernet frame, at least {MIN_FRAME} bytes: the Ethernet header and an \
                 IPv4 header (got {})",
                bytes.len()
            ),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> SpecError {
        parse(s).expect_err(s)
    }

    #[test]
    fn a_tcp_syn_with_defaults() {
        let s = parse("tcp 10.0.1.10:40000 -> 8.8.8.8:443").unwrap();
        assert_eq!(s.proto, PROTO_TCP);
        assert_eq!(s.src, Ipv4Addr::new(10, 0, 1, 10));
        assert_eq!((s.sport, s.dport), (40000, 443));
        assert_eq!(s.dst, Ipv4Addr::new(8, 8, 8, 8));
        assert_eq!(s.tcp_flags, 0x02, "a SYN unless told");
        assert_eq!(s.ttl, 64);
        assert!(s.df);
        assert_eq!(s.dst_mac, None);
    }

    #[test]
    fn options_in_brackets_with_or_without_spaces_and_commas() {
        let s =
            parse("TCP 10.0.1.10:40000->8.8.8.8:443 [flags SA, ttl 1][len 1500 no-df]").unwrap();
        assert_eq!(s.tcp_flags, 0x12);
        assert_eq!(s.ttl, 1);
        assert_eq!(s.len, Some(1500));
        assert!(!s.df);
        let s = parse("udp 192.168.1.15:5000 -> 192.168.1.104:53 [from 02:00:00:00:00:15, to fa:16:3e:00:00:03]").unwrap();
        assert_eq!(s.proto, PROTO_UDP);
        assert_eq!(s.src_mac, [2, 0, 0, 0, 0, 0x15]);
        assert_eq!(s.dst_mac, Some([0xfa, 0x16, 0x3e, 0, 0, 3]));
    }

    #[test]
    fn icmp_echo_ids() {
        let s = parse("icmp 10.0.1.10 -> 8.8.8.8 [echo id 7]").unwrap();
        assert_eq!((s.icmp_type, s.sport, s.dport), (ICMP_ECHO_REQUEST, 7, 7));
        let s = parse("icmp 8.8.8.8 -> 10.0.1.10 [echo-reply id 9]").unwrap();
        assert_eq!((s.icmp_type, s.sport), (ICMP_ECHO_REPLY, 9));
        let s = parse("icmp 8.8.8.8 -> 10.0.1.10 [id 3]").unwrap();
        assert_eq!((s.icmp_type, s.sport), (ICMP_ECHO_REQUEST, 3));
        let s = parse("icmp 8.8.8.8 -> 10.0.1.10").unwrap();
        assert_eq!(s.sport, 1);
    }

    #[test]
    fn bad_tokens_are_named_with_what_was_expected() {
        let e = err("tcpp 10.0.1.10:1 -> 8.8.8.8:443");
        assert_eq!((e.token.as_str(), e.column), ("tcpp", 1));
        assert!(e.expected.contains("tcp, udp or icmp"), "{e}");

        let e = err("tcp 10.0.1.10:40000 -> 8.8.8.8:99999");
        assert_eq!(e.token, "99999");
        assert_eq!(e.column, 32);
        assert!(e.expected.contains("destination port 1-65535"), "{e}");

        let e = err("tcp 10.0.1.300:4 -> 8.8.8.8:443");
        assert_eq!(e.token, "10.0.1.300:4");
        assert!(e.expected.contains("source as IPV4-ADDRESS:PORT"), "{e}");

        let e = err("tcp 10.0.1.10 -> 8.8.8.8:443");
        assert_eq!(e.token, "10.0.1.10");

        let e = err("tcp 10.0.1.10:1 to 8.8.8.8:443");
        assert_eq!(e.token, "to");
        assert!(e.expected.contains("->"), "{e}");

        let e = err("tcp 10.0.1.10:1 -> 8.8.8.8:443 [flags SX]");
        assert_eq!(e.token, "SX");
        assert!(e.expected.contains("S A F R P U"), "{e}");

        let e = err("tcp 10.0.1.10:1 -> 8.8.8.8:443 [ttl 300]");
        assert_eq!(e.token, "300");

        let e = err("tcp 10.0.1.10:1 -> 8.8.8.8:443 [colour red]");
        assert_eq!(e.token, "colour");
        assert!(e.expected.contains("flags"), "{e}");

        let e = err("icmp 10.0.1.10 -> 8.8.8.8 [flags S]");
        assert_eq!(e.token, "flags");

        let e = err("udp 10.0.1.10:1 -> 8.8.8.8:53 [echo id 1]");
        assert_eq!(e.token, "echo");

        let e = err("icmp 10.0.1.10:7 -> 8.8.8.8");
        assert!(e.expected.contains("no ports"), "{e}");

        let e = err("tcp 10.0.1.10:1 -> 8.8.8.8:443 [len 20]");
        assert_eq!(e.token, "20");
        assert!(e.expected.contains("40-65535"), "{e}");

        let e = err("tcp 10.0.1.10:1 -> 8.8.8.8:443 [ttl 3");
        assert_eq!(e.token, "");
        assert!(e.to_string().contains("ends too early"), "{e}");

        let e = err("tcp 10.0.1.10:1 ->");
        assert_eq!(e.token, "");
        assert!(e.expected.contains("destination"), "{e}");

        let e = err("tcp 10.0.1.10:1 -> 8.8.8.8:443 junk");
        assert_eq!(e.token, "junk");
        assert!(e.expected.contains('['), "{e}");

        let e = err("");
        assert!(e.expected.contains("protocol"), "{e}");
    }

    #[test]
    fn hex_frames() {
        let f = parse_hex(&format!(
            "0x ffff ffff ffff:0011 2233 4455 0800 {}",
            "00".repeat(20)
        ))
        .unwrap();
        assert_eq!(f.len(), 34);
        assert_eq!(&f[..6], &[0xff; 6]);
        let e = parse_hex("ffffffffffff00112233445508g0").unwrap_err();
        assert_eq!((e.token.as_str(), e.column), ("g", 27));
        assert!(parse_hex("fff").unwrap_err().expected.contains("even"));
        assert!(parse_hex("ffff").unwrap_err().expected.contains("34 bytes"));
        let e = parse_hex(&"00".repeat(33)).unwrap_err();
        assert!(e.expected.contains("at least 34 bytes") && e.expected.contains("got 33"));
    }

    #[test]
    fn frames_of_specs_read_back_with_good_checksums() {
        let mac = [0xfa, 0x16, 0x3e, 0, 0, 1];
        for text in [
            "tcp 10.0.1.10:40000 -> 8.8.8.8:443 [flags S]",
            "udp 192.168.1.15:5000 -> 192.168.1.104:53 [len 200]",
            "icmp 10.0.1.10 -> 8.8.8.8 [echo id 7, ttl 3]",
        ] {
            let s = parse(text).unwrap();
            let f = s.frame(mac);
            let h = frame::read(&f).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(h.dst_mac, mac);
            let ip = h.ip.expect("IPv4");
            assert_eq!((ip.src, ip.dst, ip.ttl), (s.src, s.dst, s.ttl));
            assert_eq!((ip.sport, ip.dport), (s.sport, s.dport));
            assert!(ip.ip_checksum_ok, "{text}");
            assert_eq!(ip.l4_checksum, frame::Checksum::Ok, "{text}");
            if let Some(len) = s.len {
                assert_eq!(ip.tot_len, len);
            }
        }
    }
}
