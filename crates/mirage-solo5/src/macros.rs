//! The macros a guest uses to declare its devices and its `main`.

use solo5_abi::mft::MftEntry;

/// Copies the first `N` entries of `s` into an array (for `manifest!`).
pub const fn entries<const N: usize>(s: &[MftEntry]) -> [MftEntry; N] {
    assert!(s.len() == N);
    let mut out = [MftEntry::ZERO; N];
    let mut i = 0;
    while i < N {
        out[i] = s[i];
        i += 1;
    }
    out
}

/// Declares the devices of the unikernel: its Solo5 manifest, placed in the
/// MFT1 ELF note that the tenders read.
///
/// ```
/// mirage_solo5::manifest!(net "service", block "storage");
/// ```
///
/// A unikernel without devices writes `mirage_solo5::manifest!();`.
///
/// Names are 1 to 67 alphanumeric characters, checked at compile time.
#[macro_export]
macro_rules! manifest {
    ($($kind:ident $name:literal),* $(,)?) => {
        const __MIRAGE_SOLO5_ENTRIES: &[$crate::abi::mft::MftEntry] = &[
            $crate::abi::mft::MftEntry::reserved_first(),
            $($crate::manifest!(@entry $kind $name)),*
        ];
        #[unsafe(link_section = ".note.solo5.manifest")]
        #[used]
        static __MIRAGE_SOLO5_MANIFEST: $crate::abi::note::Mft1Note<{ __MIRAGE_SOLO5_ENTRIES.len() }> =
            $crate::abi::note::Mft1Note::new($crate::macros::entries(__MIRAGE_SOLO5_ENTRIES));
        /// The bindings refer to this symbol, so that a guest without a
        /// manifest fails to link instead of failing to boot.
        #[unsafe(no_mangle)]
        #[used]
        static __mirage_solo5_manifest_declared: u8 = 0;
    };
    (@entry net $name:literal) => {
        // The bindings read and write frames behind a virtio-net header
        // where the tender grants one (our spt tender).
        $crate::abi::mft::MftEntry::device($name, $crate::abi::mft::MftType::NetBasic).wanting_vnet_hdr()
    };
    (@entry block $name:literal) => {
        $crate::abi::mft::MftEntry::device($name, $crate::abi::mft::MftType::BlockBasic)
    };
}

/// Names the application's entry point: `fn(&StartInfo) -> i32`. The value
/// it returns is the unikernel's exit status.
///
/// ```
/// mirage_solo5::main!(start);
/// fn start(si: &mirage_solo5::StartInfo) -> i32 {
///     si.cmdline.len() as i32
/// }
/// ```
#[macro_export]
macro_rules! main {
    ($f:path) => {
        #[unsafe(no_mangle)]
        fn __mirage_solo5_app_main(si: &$crate::StartInfo) -> i32 {
            let f: fn(&$crate::StartInfo) -> i32 = $f;
            f(si)
        }
    };
}

#[cfg(test)]
mod tests {
    use solo5_abi::mft::{self, MftType};

    crate::manifest!(net "service", block "storage");

    #[test]
    fn the_manifest_note_is_valid() {
        let note = &__MIRAGE_SOLO5_MANIFEST;
        assert_eq!(note.h.descsz as usize, 4 + mft::manifest_size(3));
        assert_eq!(note.m.header.entries, 3);
        assert_eq!(note.m.e[1].name_str(), "service");
        assert_eq!(note.m.e[1].mtype, MftType::NetBasic as u32);
        assert_eq!(note.m.e[2].name_str(), "storage");
    }
}
