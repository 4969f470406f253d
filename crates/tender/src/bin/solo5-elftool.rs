//! `solo5-elftool`: generate and query Solo5 manifests and ABI notes.
#![no_main]

#[unsafe(no_mangle)]
extern "C" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
    let mut args = std::env::args_os();
    tender::set_prog(&args.next().unwrap_or_default());
    let args: Vec<_> = args.collect();
    let status = tender::elftool::main(&args);
    // Without the runtime's exit path, flush standard output here.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    status
}
