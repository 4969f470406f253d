//! Compiles the kv-ro example's data directory into the image.
fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../kv-ro/data");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("data.rs");
    mirage_kv::crunch::generate_named(&dir, &out, "DATA").expect("crunching examples/kv-ro/data");
}
