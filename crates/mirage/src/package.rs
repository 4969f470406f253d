//! `mirage package --oci`: packs the built unikernel, the tender it runs
//! on and its disk images into an OCI image tarball (`mirage_oci::image`)
//! that `ctr images import` takes and `mirage-runc` (or urunc) boots.
//! `mirage package --iso`: makes a virtio unikernel a GRUB-bootable ISO
//! image, as Solo5's `solo5-virtio-mkimage` does.

use std::path::{Path, PathBuf};

use mirage_oci::image::Entry;
use mirage_oci::{Target as OciTarget, Unikernel, quote};

use crate::generate::Target;
use crate::install::static_tender;
use crate::run::{Device, devices, ensure_built};
use crate::{Args, Failure, help, load, load_state, parse_target};

pub const PACKAGE_HELP: &str = "\
usage: mirage package --oci [-t TARGET] [--output=FILE] [--name=REFERENCE] [--mem=MIB] [-- ARGS...]
       mirage package --iso [--output=FILE] [-- ARGS...]

--oci packs the unikernel built for hvt or spt (building it first if
needed) into an OCI image: a tarball in the OCI image layout, written to
FILE (default dist/NAME-TARGET.oci.tar), that `ctr images import FILE`
loads as REFERENCE (default localhost/mirage/NAME:TARGET). Its one layer
holds /unikernel/IMAGE, the tender (solo5-hvt or solo5-spt, built from
the mirage-rs sources and linked statically, so that it runs whatever C
library the host has), each block device's disk image
(/unikernel/NAME.img, made as mirage run makes it) and /urunc.json; the
boot description is in the image's annotations and labels, named as urunc
names them where it can (com.urunc.unikernel.*), so urunc boots the image
too. ARGS become the unikernel's command line in the image; --mem its
memory in MiB when the container has no memory limit. mirage-runc, the
OCI runtime of mirage-rs, boots it under containerd (README.md,
\"Containers\").

--iso makes the unikernel built for virtio a bootable ISO 9660 image
(default dist/NAME.iso) with grub-mkrescue (Debian: grub-pc-bin,
grub-common, xorriso, mtools): GRUB boots dist/NAME.virtio with ARGS as
its command line, its own menu and messages on the serial line. Boot it
with `qemu-system-x86_64 -cdrom FILE -serial stdio -display none`, or on any
PC or hypervisor that boots a CD image, plus a virtio-net-pci device for
each network interface and a virtio-blk-pci device for each block device,
in mirage.toml's order.";

fn read(path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| Failure::new(format!("{}: {e}", path.display()), "check the file"))
}

pub fn package(dir: &Path, argv: &[String]) -> Result<(), Failure> {
    let args = Args::parse("package", argv, &["oci", "iso", "target=", "output=", "name=", "mem=", "help"])?;
    if help(&args, PACKAGE_HELP) {
        return Ok(());
    }
    if args.flag("oci") && args.flag("iso") {
        return Err(Failure::usage("package: both --oci and --iso given", "make one at a time"));
    }
    if args.flag("iso") {
        return iso(dir, &args);
    }
    if !args.flag("oci") {
        return Err(Failure::usage("package: no format given", "write mirage package --oci or mirage package --iso"));
    }
    if let Some(p) = args.positional.first() {
        return Err(Failure::usage(
            format!("package: unexpected argument {p:?}"),
            "boot arguments go after --: mirage package --oci -- --port=8080",
        ));
    }
    let config = load(dir)?;
    let target = args.value("target").map(parse_target).transpose()?;
    let opts = load_state(&config, target)?;
    let oci_target = match opts.target {
        Target::Hvt => OciTarget::Hvt,
        Target::Spt => OciTarget::Spt,
        Target::Virtio => {
            return Err(Failure::usage(
                "package --oci packs hvt and spt unikernels; this one is configured for virtio",
                "boot a virtio unikernel from an ISO: mirage package --iso; or mirage configure -t hvt (or -t spt), then mirage package --oci",
            ));
        }
        Target::Unix => {
            return Err(Failure::usage(
                "package --oci packs hvt and spt unikernels; this one is configured for unix",
                "mirage configure -t hvt (or -t spt), then mirage package --oci",
            ));
        }
    };
    let mem_mib = args
        .value("mem")
        .map(|m| {
            m.parse::<u32>().ok().filter(|n| (2..=65536).contains(n)).ok_or_else(|| {
                Failure::usage(format!("--mem={m}: not a memory size"), "give MiB from 2 to 65536: --mem=32")
            })
        })
        .transpose()?;
    let image = ensure_built(&config, &opts)?;
    let tender = static_tender(opts.target)?;
    let image_name = opts.target.image(&config.name);
    let tender_name = format!("solo5-{}", opts.target.name());
    let mut files = vec![
        Entry { path: format!("/unikernel/{image_name}"), mode: 0o644, data: read(&image)? },
        Entry { path: format!("/unikernel/{tender_name}"), mode: 0o755, data: read(&tender)? },
    ];
    let mut nets = Vec::new();
    let mut blocks = Vec::new();
    for d in devices(&config, &opts)? {
        match d {
            Device::Net(interface) => nets.push(interface),
            Device::Block(interface, path, _) => {
                let at = format!("/unikernel/{interface}.img");
                files.push(Entry { path: at.clone(), mode: 0o644, data: read(&path)? });
                blocks.push((interface, at));
            }
            Device::KvRwDirectory(..) => {}
        }
    }
    let unikernel = Unikernel {
        target: oci_target,
        binary: format!("/unikernel/{image_name}"),
        tender: format!("/unikernel/{tender_name}"),
        cmdline: args.rest.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" "),
        mem_mib,
        nets,
        blocks,
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let reference = args
        .value("name")
        .map(String::from)
        .unwrap_or_else(|| format!("localhost/mirage/{}:{}", config.name, opts.target.name()));
    let output = args
        .value("output")
        .map(PathBuf::from)
        .unwrap_or_else(|| config.dir.join("dist").join(format!("{}-{}.oci.tar", config.name, opts.target.name())));
    let mut data = Vec::new();
    mirage_oci::image::write(&reference, &unikernel, &files, &mut data)
        .map_err(|e| Failure::new(format!("packing the image: {e}"), "check the unikernel's files"))?;
    // Replace, not overwrite in place, as mirage build does.
    let _ = std::fs::remove_file(&output);
    std::fs::write(&output, &data)
        .map_err(|e| Failure::new(format!("{}: {e}", output.display()), "check the directory's permissions"))?;
    println!(
        "packed {reference} into {} ({} KiB): ctr images import {}",
        output.display(),
        data.len().div_ceil(1024),
        output.display()
    );
    Ok(())
}

/// The word `w` quoted for GRUB's script, which unquotes it as a shell
/// would. GRUB then joins the words into the Multiboot command line,
/// quoting a word with spaces in double quotes and escaping quotes and
/// backslashes, which the unikernel's shell-like split undoes.
fn grub_word(w: &str) -> String {
    format!("'{}'", w.replace('\'', "'\\''"))
}

/// The GRUB configuration that boots `image` (in /boot) at once, with
/// `args`, on the serial line. GRUB's Multiboot command line leaves out
/// the kernel's path, which QEMU's starts with and the bindings drop: the
/// path is given again as the first word.
fn grub_cfg(name: &str, image: &str, args: &[String]) -> String {
    let mut line = format!("/boot/{image} /boot/{image}");
    for a in args {
        line.push(' ');
        line.push_str(&grub_word(a));
    }
    format!(
        "set timeout=0\nset default=0\nserial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\n\
         menuentry \"{name}\" {{\n    multiboot {line}\n    boot\n}}\n"
    )
}

fn iso(dir: &Path, args: &Args) -> Result<(), Failure> {
    if args.value("name").is_some() || args.value("mem").is_some() {
        return Err(Failure::usage("--name and --mem apply to --oci", "drop them with --iso"));
    }
    if let Some(p) = args.positional.first() {
        return Err(Failure::usage(
            format!("package: unexpected argument {p:?}"),
            "boot arguments go after --: mirage package --iso -- --hello=Hi",
        ));
    }
    let config = load(dir)?;
    let target = args.value("target").map(parse_target).transpose()?;
    let opts = load_state(&config, target)?;
    if opts.target != Target::Virtio {
        return Err(Failure::usage(
            format!("package --iso packs virtio unikernels; this one is configured for {}", opts.target.name()),
            "mirage configure -t virtio, then mirage package --iso",
        ));
    }
    let mkrescue = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("grub-mkrescue"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Failure::new(
                "no grub-mkrescue on PATH: it makes the ISO image",
                "install it (Debian: apt-get install grub-pc-bin grub-common xorriso mtools)",
            )
        })?;
    let image = ensure_built(&config, &opts)?;
    let image_name = opts.target.image(&config.name);
    let output = args
        .value("output")
        .map(PathBuf::from)
        .unwrap_or_else(|| config.dir.join("dist").join(format!("{}.iso", config.name)));
    let tree = std::env::temp_dir().join(format!("mirage-iso-{}-{}", config.name, std::process::id()));
    let _ = std::fs::remove_dir_all(&tree);
    let result = (|| {
        let grub = tree.join("boot/grub");
        let io = |p: &Path, e: std::io::Error| Failure::new(format!("{}: {e}", p.display()), "check the free space");
        std::fs::create_dir_all(&grub).map_err(|e| io(&grub, e))?;
        std::fs::copy(&image, tree.join("boot").join(&image_name)).map_err(|e| io(&image, e))?;
        let cfg = grub.join("grub.cfg");
        std::fs::write(&cfg, grub_cfg(&config.name, &image_name, &args.rest)).map_err(|e| io(&cfg, e))?;
        let _ = std::fs::remove_file(&output);
        let out = std::process::Command::new(&mkrescue)
            .arg("-o")
            .arg(&output)
            .arg(&tree)
            .output()
            .map_err(|e| Failure::new(format!("cannot run grub-mkrescue: {e}"), "check its installation"))?;
        if !out.status.success() {
            return Err(Failure::new(
                format!("grub-mkrescue failed:\n{}", String::from_utf8_lossy(&out.stderr).trim()),
                "it needs xorriso and mtools, and GRUB's PC modules (Debian: apt-get install grub-pc-bin xorriso mtools)",
            ));
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tree);
    result?;
    let size = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
    println!(
        "made {} ({} KiB): qemu-system-x86_64 -cdrom {} -serial stdio -display none",
        output.display(),
        size.div_ceil(1024),
        output.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grub_passes_each_word_quoted_for_the_unikernel() {
        let cfg = grub_cfg("hello", "hello.virtio", &["--hello=Hola Mundo!".into(), "plain".into()]);
        assert!(
            cfg.contains("multiboot /boot/hello.virtio /boot/hello.virtio '--hello=Hola Mundo!' 'plain'\n"),
            "{cfg}"
        );
        assert_eq!(grub_word("it's"), "'it'\\''s'");
        assert!(cfg.contains("menuentry \"hello\""), "{cfg}");
    }
}
