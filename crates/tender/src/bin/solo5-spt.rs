//! `solo5-spt`: run a Solo5 unikernel as a seccomp-sandboxed process.
fn main() {
    let mut args = std::env::args_os();
    tender::set_prog(&args.next().unwrap_or_default());
    let args: Vec<_> = args.collect();
    let result = tender::spt::run(&args);
    tender::exit_with(result.map(|never| match never {}), || tender::spt::usage(tender::prog()), || tender::spt::version(tender::prog()))
}
