//! `solo5-elftool`: generate and query Solo5 manifests and ABI notes.
fn main() {
    let mut args = std::env::args_os();
    tender::set_prog(&args.next().unwrap_or_default());
    let args: Vec<_> = args.collect();
    std::process::exit(tender::elftool::main(&args))
}
