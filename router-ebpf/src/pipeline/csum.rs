//! Incremental Internet checksum update (RFC 1624), on values as they sit in
//! the packet: one's complement sums do not depend on byte order as long as
//! every word is read the same way.

#[inline(always)]
pub fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The checksum `check` after a field changed from `old` to `new`
/// (`size` 2: low 16 bits of old/new are used; 4: all 32).
#[inline(always)]
pub fn replace(check: u16, old: u32, new: u32, size: u64) -> u16 {
    // HC' = ~(~HC + ~m + m')
    let mut s: u32 = (!check) as u32;
    if size == 4 {
        s += (!(old as u16)) as u32 + (!((old >> 16) as u16)) as u32;
        s += (new & 0xffff) + (new >> 16);
    } else {
        s += (!(old as u16)) as u32;
        s += new & 0xffff;
    }
    !fold(s)
}

/// Folded (not inverted) sum of the TCP/UDP pseudo-header, as the kernel
/// leaves it in the checksum field of a CHECKSUM_PARTIAL packet.
#[inline(always)]
pub fn pseudo(src: u32, dst: u32, proto: u8, l4_len: u16) -> u16 {
    let s = (src & 0xffff)
        + (src >> 16)
        + (dst & 0xffff)
        + (dst >> 16)
        + (proto as u16).to_be() as u32
        + l4_len.to_be() as u32;
    fold(s)
}
