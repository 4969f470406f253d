//! Links the examples as Solo5 unikernels and compiles the kv-ro example's
//! data directory into the image.
fn main() {
    match std::env::var("DEP_MIRAGE_SOLO5_LINK_ARGS") {
        Ok(args) => {
            for arg in args.split(' ') {
                println!("cargo:rustc-link-arg-bins={arg}");
            }
        }
        Err(_) => panic!("build the Solo5 examples with --features hvt or --features spt"),
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../kv-ro/data");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("data.rs");
    mirage_kv::crunch::generate_named(&dir, &out, "DATA").expect("crunching examples/kv-ro/data");
}
