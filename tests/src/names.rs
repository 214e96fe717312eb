//! Unique names, so tests can run in parallel and leftovers never collide.

use rand::Rng as _;

/// `n` random lowercase hex digits.
pub fn hex(n: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| std::char::from_digit(rng.gen_range(0..16), 16).unwrap())
        .collect()
}

/// A short tag identifying one test's objects (6 hex digits).
pub fn tag() -> String {
    hex(6)
}

/// A UUID-shaped random ID (8-4-4-4-12 hex digits).
pub fn uuid() -> String {
    format!("{}-{}-{}-{}-{}", hex(8), hex(4), hex(4), hex(4), hex(12))
}

/// A UUID-shaped ID whose first group starts with `tag`, so a leftover
/// `qrouter-` namespace can be traced back to its test.
pub fn uuid_with(tag: &str) -> String {
    let t: String = tag.chars().take(8).collect();
    format!(
        "{t}{}-{}-{}-{}-{}",
        hex(8 - t.len()),
        hex(4),
        hex(4),
        hex(4),
        hex(12)
    )
}

/// A random MAC in Neutron's `fa:16:3e` range.
pub fn mac() -> String {
    let mut rng = rand::thread_rng();
    format!(
        "fa:16:3e:{:02x}:{:02x}:{:02x}",
        rng.r#gen::<u8>(),
        rng.r#gen::<u8>(),
        rng.r#gen::<u8>()
    )
}
