//! `solo5-virtio`: boot a virtio unikernel under QEMU, with the command
//! line of `solo5-hvt` and `solo5-spt`.

fn main() {
    tender::tender_main(tender::virtio::run, tender::virtio::usage, tender::virtio::version)
}
