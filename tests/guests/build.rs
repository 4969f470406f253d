//! Links the guests as freestanding Solo5 executables, with the settings
//! the bindings publish for the selected target.
fn main() {
    match std::env::var("DEP_MIRAGE_SOLO5_LINK_ARGS") {
        Ok(args) => {
            for arg in args.split(' ') {
                println!("cargo:rustc-link-arg-bins={arg}");
            }
        }
        Err(_) => panic!("build the test guests with --features hvt, --features spt or --features virtio"),
    }
}
