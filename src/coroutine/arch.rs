//! The per-architecture pieces of a switch (x86_64 and aarch64; elsewhere a no-op and an
//! address on the stack): cache-line prefetches and reading the stack pointer, for
//! `Core::prefetch` and `switch_out_waiting`, and where generator keeps the field every resume
//! reads.

pub(super) const LINE: usize = 64;
/// Where generator 0.8.12's `GeneratorImpl` keeps its `f` (read by every resume), from the
/// start of the object.
pub(super) const GENERATOR_F_OFFSET: usize = 0x110;

/// Prefetches `lines` cache lines from `addr` up. A hint only: any address is fine.
#[inline(always)]
pub(super) fn prefetch_lines(addr: usize, lines: usize) {
    for i in 0..lines {
        let p = addr.wrapping_add(i * LINE) as *const i8;
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch never faults and has no effect a program can observe, whatever the
        // address (x86_64 always has SSE).
        unsafe {
            std::arch::x86_64::_mm_prefetch(p, std::arch::x86_64::_MM_HINT_T0)
        };
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above: `prfm` is a hint that never faults.
        unsafe {
            std::arch::asm!(
                "prfm pldl1keep, [{0}]",
                in(reg) p,
                options(nostack, readonly, preserves_flags)
            )
        };
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        let _ = p;
    }
}

/// The current stack pointer, read without making the caller keep anything on its stack.
#[inline(always)]
pub(super) fn stack_pointer() -> usize {
    let sp: usize;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: copies a register; touches no memory.
    unsafe {
        std::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags))
    };
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as above.
    unsafe {
        std::arch::asm!("mov {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags))
    };
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let here = 0u8;
        sp = std::hint::black_box(std::ptr::addr_of!(here)) as usize;
    }
    sp
}
