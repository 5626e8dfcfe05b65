//! The only calls into mimalloc's C API (an option, the collection). Each is a
//! plain function of mimalloc's stable API taking values, no pointers the caller keeps.
#![allow(unsafe_code)]

use libmimalloc_sys as sys;

/// `mi_option_purge_delay` in mimalloc v3's `mimalloc.h` (the option enum's 16th entry);
/// libmimalloc-sys names no constant for it.
const MI_OPTION_PURGE_DELAY: sys::mi_option_t = 15;

pub(crate) fn set_purge_delay_ms(ms: i64) {
    // SAFETY: mi_option_set takes an option id and a value; `MI_OPTION_PURGE_DELAY` is one
    // of mimalloc's options, and setting an option is allowed at any time (mimalloc reads
    // it again at every purge decision).
    unsafe { sys::mi_option_set(MI_OPTION_PURGE_DELAY, ms as _) }
}

pub(crate) fn collect() {
    // SAFETY: mi_collect takes no pointer; it collects the calling thread's heap and
    // purges the arenas, all under mimalloc's own synchronisation.
    unsafe { sys::mi_collect(true) }
}
