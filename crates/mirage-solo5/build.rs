//! Tells the guest crate how to link for the selected target.
//!
//! A guest's own build script forwards `DEP_MIRAGE_SOLO5_LINK_ARGS` to
//! `cargo:rustc-link-arg-bins` (see the crate documentation): a freestanding
//! static executable, laid out by this crate's linker script.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let hvt = std::env::var_os("CARGO_FEATURE_HVT").is_some();
    let spt = std::env::var_os("CARGO_FEATURE_SPT").is_some();
    let virtio = std::env::var_os("CARGO_FEATURE_VIRTIO").is_some();
    println!("cargo:rerun-if-changed=link/hvt.lds");
    println!("cargo:rerun-if-changed=link/spt.lds");
    println!("cargo:rerun-if-changed=link/virtio.lds");
    let target = match (hvt, spt, virtio) {
        (true, false, false) => "hvt",
        (false, true, false) => "spt",
        (false, false, true) => "virtio",
        // None (or several, which lib.rs refuses): a host build (documentation, unit tests); nothing to link.
        _ => return,
    };
    println!("cargo:target={target}");
    println!(
        "cargo:link_args=-nostartfiles -nostdlib -static -no-pie -Wl,--build-id=none -Wl,-z,max-page-size=0x1000 -Wl,-z,noexecstack -Wl,-T,{dir}/link/{target}.lds"
    );
}
