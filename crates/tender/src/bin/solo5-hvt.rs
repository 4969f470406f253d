//! `solo5-hvt`: run a Solo5 unikernel on KVM.
fn main() {
    let mut args = std::env::args_os();
    tender::set_prog(&args.next().unwrap_or_default());
    let args: Vec<_> = args.collect();
    let result = tender::hvt::run(&args);
    tender::exit_with(result, || tender::hvt::usage(tender::prog()), || tender::hvt::version(tender::prog()))
}
