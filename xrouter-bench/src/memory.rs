//! What one cold read costs on this machine: the unit a connection
//! table's cost is made of once it outgrows the caches. `--micro` prints
//! it beside the empty program's cost, so that a new connection's figure
//! can be read as "so many cold lines".
//!
//! A chain of dependent loads (each address read from the line before, so
//! no two overlap) visits every 64-byte line of a buffer once in a random
//! order. The buffer is mapped in 4 KiB pages, as the kernel maps a BPF
//! hash map's buckets (vmalloc): each read past the caches then also
//! misses the TLB, which in a VM means a walk of both page tables.

use std::time::Instant;

const LINE: usize = 64;

/// A buffer mapped in small pages, unmapped on drop.
struct Pages {
    ptr: *mut u8,
    len: usize,
}

impl Pages {
    fn new(len: usize) -> Option<Pages> {
        // SAFETY: a fresh anonymous private mapping; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        // Refused on a kernel without THP: the pages are small already.
        // SAFETY: the mapping just made.
        let _ = unsafe { libc::madvise(ptr, len, libc::MADV_NOHUGEPAGE) };
        Some(Pages {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A small deterministic generator (xorshift): the order only has to be
/// random to the hardware's prefetchers.
fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// ns per read of a chain through every line of `bytes` in random order,
/// best of three passes after a warm-up pass; None if the buffer could not
/// be mapped.
pub fn cold_read_ns(bytes: usize) -> Option<f64> {
    let lines = bytes / LINE;
    if lines < 2 {
        return None;
    }
    let buf = Pages::new(lines * LINE)?;
    // A random cyclic order of the lines (Sattolo's shuffle: one cycle).
    let mut order: Vec<usize> = (0..lines).collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..lines).rev() {
        let j = (next(&mut seed) % i as u64) as usize;
        order.swap(i, j);
    }
    // Each line holds the address of the next one in the cycle.
    for w in 0..lines {
        let from = order[w];
        let to = order[(w + 1) % lines];
        // SAFETY: both lines lie inside the mapping; aligned u64 slots.
        unsafe {
            let slot = buf.ptr.add(from * LINE).cast::<usize>();
            slot.write(buf.ptr.add(to * LINE) as usize);
        }
    }
    drop(order);
    let chase = |steps: usize| {
        let mut p = buf.ptr.cast::<usize>();
        let t = Instant::now();
        for _ in 0..steps {
            // SAFETY: every slot holds the address of a line of the mapping.
            p = unsafe { p.read_volatile() } as *mut usize;
        }
        std::hint::black_box(p);
        t.elapsed().as_nanos() as f64 / steps as f64
    };
    chase(lines);
    (0..3).map(|_| chase(lines)).min_by(f64::total_cmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_visits_every_line_and_reports_a_cost() {
        let ns = cold_read_ns(64 * 1024).expect("mapped");
        assert!(ns > 0.0 && ns.is_finite(), "{ns}");
        assert_eq!(cold_read_ns(LINE), None);
    }
}
