//! The `weir` binary: parse the command line and hand over to `weir::cli`.

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> std::process::ExitCode {
    weir::cli::main()
}
