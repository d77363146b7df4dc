//! The `weir` binary: parse the command line and hand over to `weir::cli`.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// mimalloc, called the way its fast paths expect. The `mimalloc` crate routes
/// every allocation through `mi_malloc_aligned`, whose generic path costs
/// several times `mi_malloc` for the large, byte-aligned buffers hyper
/// allocates on every request; plain `mi_malloc` already guarantees 16-byte
/// alignment, so only stricter layouts need the aligned entry points.
struct Allocator;

/// Alignment `mi_malloc` guarantees (MI_MAX_ALIGN_SIZE).
const MI_MAX_ALIGN: usize = 16;

// SAFETY: each method forwards to the matching mimalloc function, which
// returns memory of at least `layout.size()` bytes aligned to
// `layout.align()` (guaranteed by mi_malloc up to 16 bytes, and by the
// aligned variants beyond), or null on failure, as GlobalAlloc requires.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= MI_MAX_ALIGN {
            unsafe { mi::mi_malloc(layout.size()) as *mut u8 }
        } else {
            unsafe { mi::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8 }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= MI_MAX_ALIGN {
            unsafe { mi::mi_zalloc(layout.size()) as *mut u8 }
        } else {
            unsafe { mi::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8 }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        unsafe { mi::mi_free(ptr as *mut c_void) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= MI_MAX_ALIGN {
            unsafe { mi::mi_realloc(ptr as *mut c_void, new_size) as *mut u8 }
        } else {
            unsafe {
                mi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
            }
        }
    }
}

#[global_allocator]
static GLOBAL: Allocator = Allocator;

// mimalloc's option ids (mimalloc.h, v2), set before the first allocation
// that matters. By default mimalloc commits whole segments and arenas up
// front; a proxy with hundreds of connections whose buffers come and go then
// holds about twice the memory it uses, so weir commits on demand.
//
// Freed pages are purged (MADV_DONTNEED) after 1 ms, not at once: purging
// at once handed hyper's read buffers back to the kernel between two
// requests of the same connection, and every reuse faulted the pages in
// again (0.3-0.7 page faults per proxied 16 KiB response). 1 ms removes
// 95% of those faults and, at 256 connections, 6-8% of the CPU per
// request, for about 10% more peak memory (3 ms: 20%, for little more
// gain). docs/architecture.md ("Allocator") has the measurements.
const MI_OPTION_EAGER_COMMIT: i32 = 3;
const MI_OPTION_ARENA_EAGER_COMMIT: i32 = 4;
const MI_OPTION_PURGE_DELAY: i32 = 15;
const PURGE_DELAY_MS: std::ffi::c_long = 1;

extern "C" {
    fn mi_option_set(option: i32, value: std::ffi::c_long);
    fn getenv(name: *const std::ffi::c_char) -> *mut std::ffi::c_char;
}

// The commit options only take effect if set before mimalloc reserves its
// first arena, which happens before `main` (the runtime allocates), so they
// are set from an early ELF constructor: `.init_array` entries with a lower
// priority number run first, before mimalloc's own (default priority).
#[used]
#[link_section = ".init_array.00100"]
static CONFIGURE_ALLOCATOR: extern "C" fn() = configure_allocator;

extern "C" fn configure_allocator() {
    set_default(MI_OPTION_EAGER_COMMIT, c"MIMALLOC_EAGER_COMMIT", 0);
    set_default(
        MI_OPTION_ARENA_EAGER_COMMIT,
        c"MIMALLOC_ARENA_EAGER_COMMIT",
        0,
    );
    set_default(
        MI_OPTION_PURGE_DELAY,
        c"MIMALLOC_PURGE_DELAY",
        PURGE_DELAY_MS,
    );
}

/// Sets a mimalloc option unless the operator set it in the environment
/// (mimalloc's own `MIMALLOC_*` variables), in which case mimalloc reads that
/// value itself on first use: the defaults above are weir's, the override is
/// the operator's.
fn set_default(option: i32, env_name: &std::ffi::CStr, value: std::ffi::c_long) {
    // SAFETY: getenv reads the environment the C runtime set up before any
    // constructor runs, and nothing writes it concurrently this early.
    // mi_option_set only stores a value in mimalloc's static option table,
    // which needs no initialisation; the ids are those of the bundled
    // mimalloc version.
    unsafe {
        if getenv(env_name.as_ptr()).is_null() {
            mi_option_set(option, value);
        }
    }
}

fn main() -> std::process::ExitCode {
    weir::cli::main()
}
