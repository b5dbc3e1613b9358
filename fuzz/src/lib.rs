//! What every fuzz target shares: an allocator that aborts on any single
//! allocation larger than [`LIMIT`], so an input that makes a parser trust a
//! length field and allocate from it is reported as a crash, not missed.

use std::alloc::{GlobalAlloc, Layout, System};

/// The largest single allocation a parser may make from any input.
pub const LIMIT: usize = 256 << 20;

pub struct Bounded;

unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn check(size: usize) {
    if size > LIMIT {
        // No allocation from here on: write the message directly, then abort
        // (libFuzzer saves the input that did it).
        let msg = b"fuzz: a single allocation of more than 256 MiB\n";
        unsafe { libc_write(2, msg.as_ptr(), msg.len()) };
        std::process::abort();
    }
}

unsafe extern "C" {
    #[link_name = "write"]
    fn libc_write(fd: i32, buf: *const u8, n: usize) -> isize;
}

/// Declares the bounded allocator in a target.
#[macro_export]
macro_rules! bounded_allocations {
    () => {
        #[global_allocator]
        static ALLOC: $crate::Bounded = $crate::Bounded;
    };
}
