//! `solo5-elftool` on real executables and manifest sources.

use crate::{Case, Needs, case};
use testkit::{Scratch, guest, run, tender};

pub fn cases(v: &mut Vec<Case>) {
    v.push(case("elftool::queries_real_images", Needs::Nothing, || {
        let tool = tender("elftool");
        for t in ["hvt", "spt"] {
            let r = run(&tool, &["query-abi".to_string(), guest(t, "hello")?.display().to_string()])?;
            r.expect_status(0)?;
            if r.stdout != format!("{{\n  \"type\": \"solo5.abi\",\n  \"target\": \"{t}\",\n  \"version\": 2\n}}\n") {
                return Err(format!("query-abi output:\n{}", r.stdout));
            }
            let r = run(&tool, &["query-manifest".to_string(), guest(t, "net")?.display().to_string()])?;
            r.expect_status(0)?;
            if r.stdout
                != "{\n  \"type\": \"solo5.manifest\",\n  \"version\": 1,\n  \"devices\": [\n    { \"name\": \"service\", \"type\": \"NET_BASIC\" }\n  ]\n}\n"
            {
                return Err(format!("query-manifest output:\n{}", r.stdout));
            }
        }
        let r = run(&tool, &["query-manifest", "/nonexistent"])?;
        r.expect_status(1)?;
        r.expect_stderr("/nonexistent: Could not open")?;
        let r = run(&tool, &["query-abi", "/etc/hostname"])?;
        r.expect_status(1)?;
        let r = run(&tool, &["frobnicate"])?;
        r.expect_status(1)?;
        r.expect_stderr("usage: solo5-elftool COMMAND ...")
    }));
    v.push(case("elftool::gen_manifest", Needs::Nothing, || {
        let dir = Scratch::new("elftool");
        let tool = tender("elftool");
        let src = dir.0.join("manifest.json");
        let out = dir.0.join("manifest.c");
        std::fs::write(
            &src,
            r#"{
  "type": "solo5.manifest",
  "version": 1,
  "devices": [ { "name": "service0", "type": "NET_BASIC" }, { "name": "storage", "type": "BLOCK_BASIC" } ]
}"#,
        )
        .map_err(|e| e.to_string())?;
        let r = run(&tool, &[std::ffi::OsStr::new("gen-manifest"), src.as_os_str(), out.as_os_str()])?;
        r.expect_status(0)?;
        let c = std::fs::read_to_string(&out).map_err(|e| e.to_string())?;
        for line in [
            "#define MFT_ENTRIES 3",
            "{ .name = \"service0\", .type = MFT_DEV_NET_BASIC },",
            "{ .name = \"storage\", .type = MFT_DEV_BLOCK_BASIC },",
        ] {
            if !c.contains(line) {
                return Err(format!("generated C lacks {line:?}:\n{c}"));
            }
        }
        let devices: Vec<String> =
            (0..64).map(|i| format!("{{\"name\": \"storage{i}\", \"type\": \"BLOCK_BASIC\"}}")).collect();
        std::fs::write(
            &src,
            format!("{{\"type\": \"solo5.manifest\", \"version\": 1,\n\"devices\": [{}]}}", devices.join(",")),
        )
        .map_err(|e| e.to_string())?;
        let r = run(&tool, &[std::ffi::OsStr::new("gen-manifest"), src.as_os_str(), out.as_os_str()])?;
        r.expect_status(1)?;
        r.expect_stderr(".devices[]: too many entries, maximum 63")
    }));
}
