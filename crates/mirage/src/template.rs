//! `mirage new`: a unikernel crate from a template, with the devices asked
//! for (`--with=stack,http,...`). Each device brings its line of
//! `mirage.toml`, its parameter of `start` and a few lines that use it;
//! `Cargo.toml` depends on what those lines use, and names the other
//! libraries, commented out, in the same form.

use std::fmt::Write as _;
use std::path::Path;

use crate::generate::Libraries;

/// What `--with` may add to the template: the device kinds, and `http` (a
/// stack, a kv-ro store `htdocs` and a wall clock, served over HTTP).
pub const ADDITIONS: [&str; 7] = ["stack", "http", "kv-ro", "kv-rw", "block", "random", "wall-clock"];

/// The template's choices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Template {
    pub stack: bool,
    pub http: bool,
    pub kv_ro: bool,
    pub kv_rw: bool,
    pub block: bool,
    pub random: bool,
    pub wall_clock: bool,
}

impl Template {
    /// The template with `with` (names of [`ADDITIONS`]); the first unknown
    /// name is the error.
    pub fn with(with: &[&str]) -> Result<Template, String> {
        let mut t = Template::default();
        for w in with {
            match *w {
                "stack" => t.stack = true,
                "http" => t.http = true,
                "kv-ro" => t.kv_ro = true,
                "kv-rw" => t.kv_rw = true,
                "block" => t.block = true,
                "random" => t.random = true,
                "wall-clock" => t.wall_clock = true,
                other => return Err(other.to_string()),
            }
        }
        // An HTTP server serves files from a store, over a stack, with
        // dates from a wall clock.
        if t.http {
            t.stack = true;
            t.kv_ro = true;
            t.wall_clock = true;
        }
        Ok(t)
    }

    /// The libraries the template's code uses, and why.
    fn libraries(&self) -> Vec<(&'static str, &'static str)> {
        let mut l = vec![("mirage-devices", "The device traits start is generic over.")];
        if self.http {
            l.push(("mirage-http", "The HTTP server and the static-file handler."));
        }
        l
    }
}

/// The libraries a unikernel adds as it grows, and what for.
const OTHER_LIBRARIES: [(&str, &str); 3] = [
    ("mirage-http", "an HTTP server over a stack, files from a kv-ro store"),
    ("mirage-runtime", "spawn, select, join_all; the memory budget"),
    ("mirage-kv", "stores over a block device (tar), in memory"),
];

/// A file of the template: its path in the crate, and its text.
pub type File = (&'static str, String);

/// The files of crate `name`, made in `dir`, with the libraries from
/// `libraries` (Rust formatted by rustfmt, when it is there); `reference`
/// is where the reference of mirage.toml is.
pub fn files(name: &str, t: &Template, libraries: &Libraries, dir: &Path, reference: &str) -> Vec<File> {
    let mut files = vec![
        ("Cargo.toml", cargo_toml(name, t, libraries, dir)),
        ("mirage.toml", mirage_toml(name, t, reference)),
        ("src/lib.rs", crate::generate::format(&lib_rs(name, t))),
        (".gitignore", "/mirage/\n/dist/\n".to_string()),
    ];
    if t.kv_ro {
        files.push((
            "htdocs/index.html",
            format!("<!DOCTYPE html>\n<title>{name}</title>\n<h1>Hello from {name}!</h1>\n"),
        ));
    }
    files
}

fn cargo_toml(name: &str, t: &Template, libraries: &Libraries, dir: &Path) -> String {
    let used = t.libraries();
    let mut c = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n[dependencies]\n"
    );
    for (l, why) in &used {
        let _ = writeln!(c, "# {why}\n{}", libraries.dependency(l, dir, &[]));
    }
    c.push_str(
        "# Libraries start may use, from the same place (the wiring takes the\n# target's own from there too):\n",
    );
    for (l, why) in OTHER_LIBRARIES.iter().filter(|(l, _)| !used.iter().any(|(u, _)| u == l)) {
        let _ = writeln!(c, "# {}  # {why}", libraries.dependency(l, dir, &[]));
    }
    c.push_str("\n# The unikernel stands alone, outside any enclosing workspace.\n[workspace]\n");
    c
}

/// The devices, in the order start takes them: name, and `mirage.toml`'s
/// value.
fn devices(t: &Template) -> Vec<(&'static str, &'static str)> {
    let mut d = vec![("console", "\"console\"")];
    if !t.http {
        d.push(("time", "\"time\""));
    }
    if t.stack {
        d.push(("stack", "{ kind = \"stack\", interface = \"service\" }"));
    }
    if t.kv_ro {
        d.push(("htdocs", "{ kind = \"kv-ro\", directory = \"htdocs\" }"));
    }
    if t.kv_rw {
        d.push(("state", "\"kv-rw\""));
    }
    if t.block {
        d.push(("storage", "{ kind = \"block\", interface = \"storage\", size = \"1M\" }"));
    }
    if t.random {
        d.push(("random", "\"random\""));
    }
    if t.wall_clock {
        d.push(("clock", "\"wall-clock\""));
    }
    d
}

fn mirage_toml(name: &str, t: &Template, reference: &str) -> String {
    let devices = devices(t);
    let mut arguments: Vec<&str> = devices.iter().map(|(n, _)| *n).collect();
    arguments.push("greeting");
    if t.http {
        arguments.push("port");
    }
    let quoted: Vec<String> = arguments.iter().map(|a| format!("\"{a}\"")).collect();
    let mut m = format!(
        "# The unikernel: what start is given, and the boot arguments.\n# mirage configure -t unix|hvt|spt && mirage build && mirage run\n# Every device kind, key, type and default: {reference}\n\n[unikernel]\nname = \"{name}\"\nstart = \"{}::start\"\narguments = [{}]\n\n[devices]\n",
        name.replace('-', "_"),
        quoted.join(", ")
    );
    for (n, value) in &devices {
        let _ = writeln!(m, "{n} = {value}");
    }
    let _ =
        write!(m, "\n[boot.greeting]\ntype = \"string\"\ndefault = \"Hello from {name}!\"\ndoc = \"What to print.\"\n");
    if t.http {
        m.push_str("\n[boot.port]\ntype = \"u16\"\ndefault = 8080\ndoc = \"The HTTP port.\"\n");
    }
    m
}

fn lib_rs(name: &str, t: &Template) -> String {
    let summary = if t.http {
        "serves htdocs/ over HTTP"
    } else if t == &Template::default() {
        "prints a greeting four times, a second apart"
    } else {
        "tries its devices, then prints a greeting four times, a second apart"
    };
    let mut r = format!(
        "//! {name}: {summary}.\n//!\n//! Generic over the device traits: `mirage configure` wires it for unix,\n//! hvt or spt.\n#![no_std]\n\nextern crate alloc;\n\n"
    );
    // Imports.
    r.push_str("use alloc::format;\n");
    if t.http {
        r.push_str("use alloc::rc::Rc;\n");
    }
    r.push_str("use alloc::string::String;\n\n");
    r.push_str("use mirage_devices::console::Console;\n");
    if t.block {
        r.push_str("use mirage_devices::block::Block;\n");
    }
    // Key names what the template reads or writes itself (the HTTP
    // server's handler names its own).
    let kv: Vec<&str> = [((t.kv_ro && !t.http) || t.kv_rw, "Key"), (t.kv_ro, "KvRo"), (t.kv_rw, "KvRw")]
        .iter()
        .filter_map(|(on, n)| on.then_some(*n))
        .collect();
    import(&mut r, "mirage_devices::kv", &kv);
    if t.random {
        r.push_str("use mirage_devices::random::Random;\n");
    }
    if t.stack {
        r.push_str("use mirage_devices::stack::Stack;\n");
    }
    let time: Vec<&str> = [(!t.http, "Duration"), (!t.http, "Sleep"), (t.wall_clock, "WallClock")]
        .iter()
        .filter_map(|(on, n)| on.then_some(*n))
        .collect();
    import(&mut r, "mirage_devices::time", &time);
    if t.http {
        r.push_str("use mirage_http::{Limits, Static, Stats};\n");
    }

    // The signature: a device the HTTP server keeps (it outlives start's
    // borrow) is a generic parameter with a 'static bound; the others are
    // `impl Trait`. (used, name, trait, generic parameter, its bounds)
    let devices = [
        (!t.http, "time", "Sleep", "", ""),
        (t.stack, "stack", "Stack", "S", "S: Stack,\n    S::Flow: 'static,"),
        (t.kv_ro, "htdocs", "KvRo", "K", "K: KvRo + 'static,"),
        (t.kv_rw, "state", "KvRw", "", ""),
        (t.block, "storage", "Block", "", ""),
        (t.random, "random", "Random", "", ""),
        (t.wall_clock, "clock", "WallClock", "W", "W: WallClock + 'static,"),
    ];
    let mut generics = Vec::new();
    let mut bounds = Vec::new();
    let mut params = vec!["console: impl Console".to_string()];
    for (used, name, trait_name, generic, bound) in devices {
        if !used {
            continue;
        }
        if t.http && !generic.is_empty() {
            generics.push(generic);
            bounds.push(bound);
            params.push(format!("{name}: {generic}"));
        } else {
            params.push(format!("{name}: impl {trait_name}"));
        }
    }
    params.push("greeting: &str".into());
    if t.http {
        params.push("port: u16".into());
    }
    let generics = if generics.is_empty() { String::new() } else { format!("<{}>", generics.join(", ")) };
    r.push_str("\n/// The unikernel.\n");
    if params.len() > 7 {
        r.push_str("#[allow(clippy::too_many_arguments)]\n");
    }
    let _ = write!(r, "pub async fn start{generics}(\n    {},\n) -> Result<(), String>", params.join(",\n    "));
    if bounds.is_empty() {
        r.push_str(" {\n");
    } else {
        let _ = write!(r, "\nwhere\n    {}\n{{\n", bounds.join("\n    "));
    }

    // The body: each device tried once, then the greeting.
    let say = |r: &mut String, what: &str| {
        let _ = writeln!(r, "    console.log(&{what}).await.map_err(|e| format!(\"console: {{e}}\"))?;");
    };
    if t.stack && !t.http {
        r.push_str("    let address = match stack.ipv4() {\n        Some((a, prefix)) => format!(\"{a}/{prefix}\"),\n        None => String::from(\"the host's\"),\n    };\n");
        say(&mut r, &format!("format!(\"{name}: IPv4 address {{address}}\")"));
    }
    if t.kv_ro && !t.http {
        r.push_str("    let key = Key::parse(\"index.html\").map_err(|e| format!(\"{e}\"))?;\n");
        r.push_str("    let size = htdocs.size(&key).await.map_err(|e| format!(\"htdocs/index.html: {e}\"))?;\n");
        say(&mut r, &format!("format!(\"{name}: htdocs/index.html has {{size}} bytes\")"));
    }
    if t.kv_rw {
        r.push_str(
            "    // The boots, counted in the read-write store (a directory on unix,\n    // memory on Solo5).\n",
        );
        r.push_str("    let key = Key::parse(\"boots\").map_err(|e| format!(\"{e}\"))?;\n");
        r.push_str("    let before = state.get(&key).await.ok().and_then(|v| core::str::from_utf8(&v).ok()?.parse::<u64>().ok());\n");
        r.push_str("    let boots = before.unwrap_or(0) + 1;\n");
        r.push_str(
            "    state.set(&key, format!(\"{boots}\").as_bytes()).await.map_err(|e| format!(\"state: {e}\"))?;\n",
        );
        say(&mut r, &format!("format!(\"{name}: boot {{boots}}\")"));
    }
    if t.block {
        r.push_str("    let info = storage.info();\n");
        say(
            &mut r,
            &format!("format!(\"{name}: storage has {{}} sectors of {{}} bytes\", info.sectors, info.sector_size)"),
        );
    }
    if t.random {
        say(&mut r, &format!("format!(\"{name}: a random number: {{}}\", random.next_u64())"));
    }
    if t.wall_clock && !t.http {
        say(&mut r, &format!("format!(\"{name}: {{}} s since the epoch\", clock.now().as_secs())"));
    }
    if t.http {
        say(&mut r, "greeting");
        r.push_str("    let listener = stack.listen(port, 64).await.map_err(|e| format!(\"port {port}: {e}\"))?;\n");
        say(&mut r, &format!("format!(\"{name}: serving htdocs/ on port {{port}}\")"));
        r.push_str("    let handler = Rc::new(Static::new(Rc::new(htdocs)));\n");
        r.push_str("    let e = mirage_http::serve(listener, handler, Rc::new(Limits::default()), Rc::new(clock), Rc::new(Stats::default())).await;\n");
        r.push_str("    Err(format!(\"the server stopped: {e}\"))\n}\n");
    } else {
        r.push_str("    for _ in 0..4 {\n");
        r.push_str("        console.log(greeting).await.map_err(|e| format!(\"console: {e}\"))?;\n");
        r.push_str("        time.sleep(Duration::from_secs(1)).await;\n    }\n    Ok(())\n}\n");
    }
    r
}

/// `use PATH::NAME;` or `use PATH::{NAMES};`, nothing for no name.
fn import(r: &mut String, path: &str, names: &[&str]) {
    match names {
        [] => {}
        [one] => {
            let _ = writeln!(r, "use {path}::{one};");
        }
        many => {
            let _ = writeln!(r, "use {path}::{{{}}};", many.join(", "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cargo(t: &Template) -> String {
        cargo_toml("app", t, &Libraries::Path("/r/crates".into()), Path::new("/r/apps/app"))
    }

    #[test]
    fn dependencies_follow_the_devices() {
        let plain = cargo(&Template::default());
        assert!(plain.contains("\nmirage-devices = { path = \"../../crates/mirage-devices\" }\n"), "{plain}");
        assert!(
            plain.contains("\n# mirage-http = { path = \"../../crates/mirage-http\" }  # an HTTP server"),
            "{plain}"
        );
        let http = cargo(&Template::with(&["http"]).unwrap());
        assert!(http.contains("\nmirage-http = { path = \"../../crates/mirage-http\" }\n"), "{http}");
        assert!(!http.contains("# mirage-http"), "{http}");
    }

    #[test]
    fn http_brings_what_it_serves_with() {
        let t = Template::with(&["http"]).unwrap();
        assert!(t.stack && t.kv_ro && t.wall_clock);
        assert_eq!(Template::with(&["stack", "floppy"]), Err("floppy".into()));
        let m = mirage_toml("app", &t, "REF");
        assert!(
            m.contains("arguments = [\"console\", \"stack\", \"htdocs\", \"clock\", \"greeting\", \"port\"]"),
            "{m}"
        );
        let names: Vec<&str> = devices(&t).iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["console", "stack", "htdocs", "clock"]);
    }

    #[test]
    fn every_template_configures() {
        // Each addition alone, and all of them: mirage.toml is accepted as
        // the tool reads it.
        let mut sets: Vec<Vec<&str>> = ADDITIONS.iter().map(|a| vec![*a]).collect();
        sets.push(ADDITIONS.to_vec());
        sets.push(Vec::new());
        for set in sets {
            let t = Template::with(&set).unwrap();
            let dir = std::env::temp_dir().join(format!("mirage-template-{}-{}", std::process::id(), set.join("+")));
            let _ = std::fs::remove_dir_all(&dir);
            for (path, text) in files("app", &t, &Libraries::Path("/r/crates".into()), &dir, "REF") {
                let p = dir.join(path);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, text).unwrap();
            }
            let c = crate::config::load(&dir).unwrap_or_else(|e| panic!("--with={}: {e}", set.join(",")));
            assert_eq!(c.start, "app::start");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
