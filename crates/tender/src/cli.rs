//! The tender command line, parsed in Solo5's two passes.
//!
//! ```text
//! solo5-hvt [--mem=MiB] [--block:NAME=PATH] [--block-sector-size:NAME=N]
//!           [--net:NAME=IFACE] [--net-mac:NAME=MAC] [--] KERNEL [ARGS...]
//! ```
//!
//! The first pass ([`split`]) finds the kernel (the first argument that does
//! not start with `-`, or the one after `--`) and stops early for `--help`
//! and `--version`. The tender then reads the kernel's manifest, because
//! which device options are valid depends on it, and hands each option to
//! its modules in a second pass. Everything after the kernel is the guest's
//! command line.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use crate::Exit;

/// A command line split around the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    /// Path of the unikernel.
    pub kernel: OsString,
    /// Options before the kernel, in order, without `--`.
    pub options: Vec<OsString>,
    /// Arguments after the kernel: the guest's command line.
    pub guest_args: Vec<OsString>,
}

/// The first pass. `args` excludes the program name.
pub fn split(args: &[OsString]) -> Result<CommandLine, Exit> {
    let mut options = Vec::new();
    let mut i = 0;
    while i < args.len() && args[i].as_bytes().first() == Some(&b'-') {
        let a = args[i].as_bytes();
        if a == b"--" {
            i += 1;
            break;
        }
        if a == b"--help" {
            return Err(Exit::Usage(None));
        }
        if a == b"--version" {
            return Err(Exit::Version);
        }
        options.push(args[i].clone());
        i += 1;
    }
    let Some(kernel) = args.get(i) else {
        return Err(Exit::Usage(Some("Missing KERNEL operand".into())));
    };
    Ok(CommandLine { kernel: kernel.clone(), options, guest_args: args[i + 1..].to_vec() })
}

/// An option as text; options that are not UTF-8 match nothing.
pub fn option_str(opt: &OsStr) -> &str {
    opt.to_str().unwrap_or("")
}

/// `--mem=MiB`: the memory size in bytes, or `None` if `arg` is another option.
pub fn parse_mem(arg: &str) -> Option<Result<u64, Exit>> {
    let value = arg.strip_prefix("--mem=")?;
    let bytes = value.parse::<u64>().ok().filter(|&mib| mib > 0).and_then(|mib| mib.checked_mul(1 << 20));
    Some(bytes.ok_or_else(|| crate::fatal!("Malformed argument to --mem")))
}

/// Joins the guest arguments with single spaces, as the tender places them
/// in guest memory (at most `size - 1` bytes, then a NUL).
pub fn guest_cmdline(args: &[OsString], size: usize) -> Result<Vec<u8>, Exit> {
    let mut line = Vec::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            line.push(b' ');
        }
        line.extend_from_slice(a.as_bytes());
    }
    // An argument with an embedded NUL cannot come from execve, but keep the
    // guest's string well-formed regardless.
    if let Some(nul) = line.iter().position(|&b| b == 0) {
        line.truncate(nul);
    }
    if line.len() >= size {
        return Err(crate::fatal!("Guest command line too long (max={} characters)", size - 1));
    }
    line.push(0);
    Ok(line)
}

/// A device option `PREFIX NAME=VALUE`, with Solo5's rules: `NAME` is 1 to 67
/// alphanumeric characters, `VALUE` the non-blank text after `=`, at most
/// `max_value` characters (the rest is ignored, as `sscanf("%Ns")` does).
/// `None` if `arg` does not have that shape.
pub fn device_option<'a>(arg: &'a str, prefix: &str, max_value: usize) -> Option<(&'a str, &'a str)> {
    let rest = arg.strip_prefix(prefix)?;
    let name_len = rest.bytes().take_while(u8::is_ascii_alphanumeric).count();
    if name_len == 0 || name_len > solo5_abi::mft::MFT_NAME_MAX {
        return None;
    }
    let (name, rest) = rest.split_at(name_len);
    let value = rest.strip_prefix('=')?;
    let value_len = value.bytes().take_while(|b| !b.is_ascii_whitespace()).count().min(max_value);
    if value_len == 0 {
        return None;
    }
    // take_while stops on an ASCII byte, so this is a char boundary; the
    // max_value cut may not be, in which case the option is refused.
    Some((name, value.get(..value_len)?))
}

/// The usage text of a tender: core options, then each module's.
pub fn usage(prog: &str, hvt: bool, modules: &[(&str, Option<&str>)]) -> String {
    let mut u = String::new();
    if hvt {
        u += &format!("usage: {prog} [ CORE OPTIONS ] [ MODULE OPTIONS ] [ -- ] KERNEL [ ARGS ]\n");
    } else {
        u += &format!("usage: {prog} [ CORE OPTIONS ] [ -- ] KERNEL [ ARGS ]\n");
    }
    u += "KERNEL is the filename of the unikernel to run.\n";
    u += "ARGS are optional arguments passed to the unikernel.\n";
    u += "Core options:\n";
    u += "  [ --mem=512 ] (guest memory in MB)\n";
    u += "    --help (display this help)\n";
    if hvt {
        u += "    --version (display version information)\n";
    }
    u += "Compiled-in modules: ";
    for (name, _) in modules {
        u += name;
        u += " ";
    }
    u += "\nCompiled-in module options:\n";
    for (_, text) in modules {
        if let Some(text) = text {
            u += &format!("    {text}\n");
        }
    }
    u
}

/// `--version` text.
pub fn version(prog: &str, abi_version: u32) -> String {
    format!("{prog} tender, version {}\nABI version {abi_version}\n", solo5_abi::SOLO5_VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_kernel_is_the_first_non_option() {
        let c = split(&os(&["--mem=64", "--net:service=tap0", "k.hvt", "--ipv4=10.0.0.2/24", "x"])).unwrap();
        assert_eq!(c.kernel, "k.hvt");
        assert_eq!(c.options, os(&["--mem=64", "--net:service=tap0"]));
        assert_eq!(c.guest_args, os(&["--ipv4=10.0.0.2/24", "x"]));
        let c = split(&os(&["--", "-k", "-a"])).unwrap();
        assert_eq!(c.kernel, "-k");
        assert_eq!(c.guest_args, os(&["-a"]));
    }

    #[test]
    fn help_version_and_missing_kernel() {
        assert!(matches!(split(&os(&["--mem=2", "--help", "k"])), Err(Exit::Usage(None))));
        assert!(matches!(split(&os(&["--version"])), Err(Exit::Version)));
        assert!(matches!(split(&os(&["--mem=2"])), Err(Exit::Usage(Some(m))) if m == "Missing KERNEL operand"));
        assert!(matches!(split(&os(&[])), Err(Exit::Usage(Some(_)))));
        // After the kernel, --help belongs to the guest.
        assert!(split(&os(&["k", "--help"])).is_ok());
    }

    #[test]
    fn mem_option() {
        assert_eq!(parse_mem("--mem=64").unwrap().unwrap(), 64 << 20);
        assert!(parse_mem("--memory=64").is_none());
        for bad in ["--mem=", "--mem=0", "--mem=-1", "--mem=x", "--mem=99999999999999999"] {
            assert!(matches!(parse_mem(bad), Some(Err(Exit::Fatal(m))) if m == "Malformed argument to --mem"), "{bad}");
        }
    }

    #[test]
    fn device_options() {
        assert_eq!(
            device_option("--block:storage=/tmp/disk.img", "--block:", 4096),
            Some(("storage", "/tmp/disk.img"))
        );
        assert_eq!(device_option("--block:storage=", "--block:", 4096), None);
        assert_eq!(device_option("--block:=x", "--block:", 4096), None);
        assert_eq!(device_option("--block:sto-rage=x", "--block:", 4096), None);
        let long = format!("--net:{}=tap0", "a".repeat(68));
        assert_eq!(device_option(&long, "--net:", 19), None);
        assert_eq!(device_option("--net:service=tap0 extra", "--net:", 19), Some(("service", "tap0")));
        assert_eq!(
            device_option("--net:service=abcdefghijklmnopqrstuvwxyz", "--net:", 19),
            Some(("service", "abcdefghijklmnopqrs"))
        );
    }

    #[test]
    fn cmdline_joins_and_limits() {
        assert_eq!(guest_cmdline(&os(&["a", "b c"]), 16).unwrap(), b"a b c\0");
        assert_eq!(guest_cmdline(&os(&[]), 16).unwrap(), b"\0");
        assert!(guest_cmdline(&os(&["x".repeat(15).as_str()]), 16).is_ok());
        assert!(
            matches!(guest_cmdline(&os(&["x".repeat(16).as_str()]), 16), Err(Exit::Fatal(m)) if m.contains("max=15"))
        );
    }
}
