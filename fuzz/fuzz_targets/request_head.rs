//! weir's request-head code (header scan, Host and strictness checks,
//! deadline and `traceparent` parsing, route matching) on arbitrary heads.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use weir::proxy::fuzzing::HeadTarget;

static TARGET: OnceLock<HeadTarget> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    TARGET.get_or_init(HeadTarget::new).run(data);
});
