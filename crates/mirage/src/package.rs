//! `mirage package --oci`: packs the built unikernel, the tender it runs
//! on and its disk images into an OCI image tarball (`mirage_oci::image`)
//! that `ctr images import` takes and `mirage-runc` (or urunc) boots.

use std::path::{Path, PathBuf};

use mirage_oci::image::Entry;
use mirage_oci::{Target as OciTarget, Unikernel, quote};

use crate::generate::Target;
use crate::run::{Device, devices, ensure_built, tender_path};
use crate::{Args, Failure, help, load, load_state, parse_target};

pub const PACKAGE_HELP: &str = "\
usage: mirage package --oci [-t TARGET] [--output=FILE] [--name=REFERENCE] [--mem=MIB] [-- ARGS...]

Packs the unikernel built for hvt or spt (building it first if needed)
into an OCI image: a tarball in the OCI image layout, written to FILE
(default dist/NAME-TARGET.oci.tar), that `ctr images import FILE` loads
as REFERENCE (default localhost/mirage/NAME:TARGET). Its one layer holds
/unikernel/IMAGE, the tender (solo5-hvt or solo5-spt, found as mirage run
finds it), each block device's disk image (/unikernel/NAME.img, made as
mirage run makes it) and /urunc.json; the boot description is in the
image's annotations and labels, named as urunc names them where it can
(com.urunc.unikernel.*), so urunc boots the image too. ARGS become the
unikernel's command line in the image; --mem its memory in MiB when the
container has no memory limit. mirage-runc, the OCI runtime of mirage-rs,
boots it under containerd (README.md, \"Containers\").";

fn read(path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| Failure::new(format!("{}: {e}", path.display()), "check the file"))
}

pub fn package(dir: &Path, argv: &[String]) -> Result<(), Failure> {
    let args = Args::parse("package", argv, &["oci", "target=", "output=", "name=", "mem=", "help"])?;
    if help(&args, PACKAGE_HELP) {
        return Ok(());
    }
    if !args.flag("oci") {
        return Err(Failure::usage("package: no format given", "write mirage package --oci (the one format)"));
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
    let tender = tender_path(opts.target)?;
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
