//! `solo5-elftool`: generates manifests and queries executables, with the
//! output of Solo5's own tool so that build systems can use either.
//!
//! ```text
//! solo5-elftool gen-manifest SOURCE OUTPUT    # manifest JSON -> C source
//! solo5-elftool query-manifest BINARY         # manifest as JSON
//! solo5-elftool query-abi BINARY              # ABI target and version as JSON
//! ```

use std::ffi::OsString;
use std::io::{Read, Write};

use solo5_abi::mft::{MFT_MAX_ENTRIES, MFT_NAME_MAX, MFT_VERSION, MftType};
use solo5_abi::note::AbiTarget;

use crate::json::{self, Kind, Value};
use crate::{Exit, exe, fatal, prog, strerror, warn};

/// The usage text.
pub fn usage(prog: &str) -> String {
    format!(
        "usage: {prog} COMMAND ...\n{prog} version {v}\n\nCOMMAND is:\n    gen-manifest SOURCE OUTPUT:\n        Generate application manifest from SOURCE, writing to OUTPUT.\n    query-abi BINARY:\n        Display the ABI target and version from BINARY.\n    query-manifest BINARY:\n        Display the application manifest from BINARY.\n",
        v = solo5_abi::SOLO5_VERSION
    )
}

/// Runs the tool; returns the exit status.
pub fn main(args: &[OsString]) -> i32 {
    let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["gen-manifest", source, output] => gen_manifest(source, output),
        ["query-manifest", binary] => query_manifest(binary),
        ["query-abi", binary] => query_abi(binary),
        _ => Err(Exit::Usage(None)),
    };
    match result {
        Ok(()) => 0,
        Err(Exit::Usage(msg)) => {
            if let Some(m) = msg {
                warn(m);
            }
            eprint!("{}", usage(prog()));
            1
        }
        Err(e) => {
            warn(e);
            1
        }
    }
}

fn expect<'v>(v: &'v Value, want: &'static str, source: &str, loc: &str) -> Result<&'v Kind, Exit> {
    if v.kind.type_name() != want {
        return Err(fatal!("{source}:{}: {loc}: expected {want}, got {}", v.line, v.kind.type_name()));
    }
    Ok(&v.kind)
}

/// A device of a manifest source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Its name.
    pub name: String,
    /// Its type.
    pub mtype: MftType,
}

/// Reads and checks a manifest source (`{"type": "solo5.manifest",
/// "version": 1, "devices": [{"name": ..., "type": ...}]}`).
pub fn parse_manifest(text: &str, source: &str) -> Result<Vec<Device>, Exit> {
    let root = json::parse(text).map_err(|e| fatal!("{source}:{}: JSON parse error: {}", e.line, e.what))?;
    let Kind::Object(members) = expect(&root, "OBJECT", source, "(root)")? else {
        return Err(fatal!("{source}: JSON parse error"));
    };
    let (mut jtype, mut jversion, mut jdevices) = (None, None, None);
    for (key, v) in members {
        match key.as_str() {
            "type" => jtype = Some((expect(v, "STRING", source, ".type")?, v.line)),
            "version" => jversion = Some((expect(v, "INTEGER", source, ".version")?, v.line)),
            "devices" => jdevices = Some((expect(v, "ARRAY", source, ".devices")?, v.line)),
            _ => return Err(fatal!("{source}:{}: (root): unknown key: {key}", v.line)),
        }
    }
    let (Some((Kind::Str(t), tline)), Some((Kind::Int(ver), vline)), Some((Kind::Array(devs), dline))) =
        (jtype, jversion, jdevices)
    else {
        let missing = if members.iter().all(|(k, _)| k != "type") {
            ".type"
        } else if members.iter().all(|(k, _)| k != "version") {
            ".version"
        } else {
            ".devices[]"
        };
        return Err(fatal!("{source}:{}: missing {missing}", root.line));
    };
    if t != "solo5.manifest" {
        return Err(fatal!("{source}:{tline}: .type: invalid value, expected \"solo5.manifest\""));
    }
    if *ver != MFT_VERSION as i64 {
        return Err(fatal!("{source}:{vline}: .version: invalid version {ver}, expected {MFT_VERSION}"));
    }
    if devs.len() + 1 > MFT_MAX_ENTRIES as usize {
        return Err(fatal!("{source}:{dline}: .devices[]: too many entries, maximum {}", MFT_MAX_ENTRIES - 1));
    }
    let mut out: Vec<Device> = Vec::new();
    for d in devs {
        let Kind::Object(fields) = expect(d, "OBJECT", source, ".devices[]")? else {
            continue;
        };
        let (mut name, mut dtype) = (None, None);
        for (key, v) in fields {
            match key.as_str() {
                "name" => name = Some((expect(v, "STRING", source, ".devices[...]")?, v.line)),
                "type" => dtype = Some((expect(v, "STRING", source, ".devices[...]")?, v.line)),
                _ => return Err(fatal!("{source}:{}: .devices[...]: unknown key: {key}", v.line)),
            }
        }
        let Some((Kind::Str(name), nline)) = name else {
            return Err(fatal!("{source}:{}: .devices[...]: missing .name", d.line));
        };
        if name.is_empty() {
            return Err(fatal!("{source}:{nline}: .devices[...]: .name may not be empty"));
        }
        if name.len() > MFT_NAME_MAX {
            return Err(fatal!("{source}:{nline}: .devices[...]: name too long"));
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(fatal!("{source}:{nline}: .devices[...]: name is not alphanumeric"));
        }
        let Some((Kind::Str(t), tline)) = dtype else {
            return Err(fatal!("{source}:{}: .devices[...]: missing .type", d.line));
        };
        let Some(mtype) = MftType::from_name(t) else {
            return Err(fatal!(
                "{source}:{tline}: .devices[...]: invalid type: {t}, expected BLOCK_BASIC or NET_BASIC"
            ));
        };
        if out.iter().any(|o| o.name == *name) {
            return Err(fatal!("{source}:{nline}: .devices[...]: duplicate name: {name}"));
        }
        out.push(Device { name: name.clone(), mtype });
    }
    Ok(out)
}

/// The C source Solo5's elftool generates for `devices`.
pub fn manifest_c(devices: &[Device]) -> String {
    let entries = devices.len() + 1;
    let mut c = format!(
        "/* Generated by solo5-elftool version {v}, do not edit */\n\n#define MFT_ENTRIES {entries}\n#include \"mft_abi.h\"\n\nMFT1_NOTE_DECLARE_BEGIN\n{{\n  .version = MFT_VERSION, .entries = {entries},\n  .e = {{\n    {{ .name = \"\", .type = MFT_RESERVED_FIRST }},\n",
        v = solo5_abi::SOLO5_VERSION
    );
    for d in devices {
        let t = MftType::name_of(d.mtype as u32);
        c += &format!("    {{ .name = \"{}\", .type = MFT_DEV_{t} }},\n", d.name);
    }
    c += "  }\n}\nMFT1_NOTE_DECLARE_END\n";
    c
}

fn gen_manifest(source: &str, output: &str) -> Result<(), Exit> {
    let mut text = String::new();
    if source == "-" {
        std::io::stdin().read_to_string(&mut text)
    } else {
        std::fs::File::open(source)
            .map_err(|e| fatal!("{source}: Could not open for reading: {}", strerror(&e)))?
            .read_to_string(&mut text)
    }
    .map_err(|e| fatal!("{source}: Could not read: {}", strerror(&e)))?;
    let devices = parse_manifest(&text, source)?;
    let c = manifest_c(&devices);
    if output == "-" { std::io::stdout().write_all(c.as_bytes()) } else { std::fs::write(output, c) }
        .map_err(|e| fatal!("{output}: Could not open for writing: {}", strerror(&e)))
}

/// The JSON `query-manifest` prints, as Solo5's (whose trailing-comma rule
/// looks at the last manifest entry, not the last device printed).
pub fn manifest_json(entries: &[solo5_abi::mft::MftEntry]) -> String {
    let mut s = format!("{{\n  \"type\": \"solo5.manifest\",\n  \"version\": {MFT_VERSION},\n  \"devices\": [\n");
    for (i, e) in entries.iter().enumerate() {
        if e.mtype >= MftType::ReservedFirst as u32 {
            continue;
        }
        let comma = if i == entries.len() - 1 { "" } else { "," };
        s += &format!("    {{ \"name\": \"{}\", \"type\": \"{}\" }}{comma}\n", e.name_str(), MftType::name_of(e.mtype));
    }
    s += "  ]\n}\n";
    s
}

fn query_manifest(binary: &str) -> Result<(), Exit> {
    let (name, bytes) = exe::read(binary.as_ref())?;
    let note = solo5_elf::load_note(
        &bytes,
        solo5_abi::note::MFT1_NOTE_TYPE,
        solo5_abi::note::MFT1_NOTE_ALIGN,
        solo5_abi::note::MFT1_NOTE_MAX_SIZE,
    )
    .map_err(|e| fatal!("{name}: {e}"))?
    .ok_or_else(|| fatal!("{name}: No Solo5 manifest found in executable"))?;
    // Read, not validated in place: the note may sit at any file offset.
    let manifest = solo5_abi::mft::read(note).map_err(|_| fatal!("{name}: Manifest validation failed"))?;
    print!("{}", manifest_json(manifest.entries()));
    Ok(())
}

fn query_abi(binary: &str) -> Result<(), Exit> {
    let (name, bytes) = exe::read(binary.as_ref())?;
    let (target, version) = exe::abi(&name, &bytes)?;
    print!(
        "{{\n  \"type\": \"solo5.abi\",\n  \"target\": \"{}\",\n  \"version\": {version}\n}}\n",
        AbiTarget::name_of(target)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_solo5s_c() {
        let d = parse_manifest(
            r#"{"type": "solo5.manifest", "version": 1, "devices": [{"name": "storage", "type": "BLOCK_BASIC"}]}"#,
            "m.json",
        )
        .unwrap();
        assert_eq!(
            manifest_c(&d),
            "/* Generated by solo5-elftool version v0.12.1, do not edit */\n\n#define MFT_ENTRIES 2\n#include \"mft_abi.h\"\n\nMFT1_NOTE_DECLARE_BEGIN\n{\n  .version = MFT_VERSION, .entries = 2,\n  .e = {\n    { .name = \"\", .type = MFT_RESERVED_FIRST },\n    { .name = \"storage\", .type = MFT_DEV_BLOCK_BASIC },\n  }\n}\nMFT1_NOTE_DECLARE_END\n"
        );
    }

    fn err(text: &str) -> String {
        match parse_manifest(text, "m.json") {
            Err(Exit::Fatal(m)) => m,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn refuses_bad_sources_with_their_line() {
        assert_eq!(err("[]"), "m.json:1: (root): expected OBJECT, got ARRAY");
        assert_eq!(
            err("{\"type\": \"solo5.manifest\",\n\"version\": 1, \"devices\": [], \"x\": 1}"),
            "m.json:2: (root): unknown key: x"
        );
        assert_eq!(err("{\"version\": 1, \"devices\": []}"), "m.json:1: missing .type");
        assert_eq!(
            err("{\"type\": \"x\", \"version\": 1, \"devices\": []}"),
            "m.json:1: .type: invalid value, expected \"solo5.manifest\""
        );
        assert_eq!(
            err("{\"type\": \"solo5.manifest\", \"version\": 2, \"devices\": []}"),
            "m.json:1: .version: invalid version 2, expected 1"
        );
        let many: Vec<String> = (0..64).map(|i| format!("{{\"name\": \"d{i}\", \"type\": \"BLOCK_BASIC\"}}")).collect();
        assert_eq!(
            err(&format!("{{\"type\": \"solo5.manifest\", \"version\": 1, \"devices\": [{}]}}", many.join(","))),
            "m.json:1: .devices[]: too many entries, maximum 63"
        );
        let base = |d: &str| format!("{{\"type\": \"solo5.manifest\", \"version\": 1, \"devices\": [{d}]}}");
        assert!(err(&base("{\"type\": \"NET_BASIC\"}")).ends_with("missing .name"));
        assert!(err(&base("{\"name\": \"\", \"type\": \"NET_BASIC\"}")).ends_with(".name may not be empty"));
        assert!(err(&base("{\"name\": \"a-b\", \"type\": \"NET_BASIC\"}")).ends_with("name is not alphanumeric"));
        assert!(
            err(&base(&format!("{{\"name\": \"{}\", \"type\": \"NET_BASIC\"}}", "a".repeat(68))))
                .ends_with("name too long")
        );
        assert!(err(&base("{\"name\": \"a\", \"type\": \"DISK\"}")).contains("invalid type: DISK"));
        assert!(err(&base("{\"name\": \"a\"}")).ends_with("missing .type"));
        assert!(
            err(&base("{\"name\": \"a\", \"type\": \"NET_BASIC\"}, {\"name\": \"a\", \"type\": \"NET_BASIC\"}"))
                .contains("duplicate name: a")
        );
        assert!(err("{\"type\": ").contains("JSON parse error"));
    }

    #[test]
    fn query_json_is_solo5s() {
        use solo5_abi::mft::MftEntry;
        let e = [
            MftEntry::reserved_first(),
            MftEntry::device("a", MftType::NetBasic),
            MftEntry::device("b", MftType::BlockBasic),
        ];
        assert_eq!(
            manifest_json(&e),
            "{\n  \"type\": \"solo5.manifest\",\n  \"version\": 1,\n  \"devices\": [\n    { \"name\": \"a\", \"type\": \"NET_BASIC\" },\n    { \"name\": \"b\", \"type\": \"BLOCK_BASIC\" }\n  ]\n}\n"
        );
    }
}
