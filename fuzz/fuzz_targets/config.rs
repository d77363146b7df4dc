//! The configuration parser and validator, and the route compiler, on
//! arbitrary files.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weir::proxy::fuzzing::config(data);
});
