//! The `mirage` tool end to end: configure, build and run of the examples
//! on every target (with `mirage run` setting up tap devices itself inside
//! a namespace of the test's own), describe rendered by Graphviz, a crate
//! made by `mirage new`, and the errors a user meets, each with its cause
//! and fix.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testkit::{Background, Netns, Run, Scratch, example, example_with, mirage, root, run_with};

use crate::{Case, Needs, case};

fn examples_dir(name: &str) -> PathBuf {
    root().join("examples").join(name)
}

/// `mirage -C DIR ARGS` with the shared cargo target directory.
fn tool(dir: &Path, args: &[&str]) -> Result<Run, String> {
    testkit::mirage_in(dir, args)
}

fn expect_failure(r: &Run, status: i32, cause: &str, fix: &str) -> Result<(), String> {
    r.expect_status(status)?;
    let cause_line = format!("mirage: {cause}");
    if !r.stderr.contains(&cause_line) || !r.stderr.contains(&format!("  fix: {fix}")) {
        return Err(format!("expected cause {cause:?} and fix {fix:?}\n{}", r.dump()));
    }
    Ok(())
}

/// A copy of the mirage binary in a directory without tenders.
fn lone_mirage(scratch: &Scratch) -> Result<PathBuf, String> {
    let p = scratch.0.join("mirage");
    std::fs::copy(mirage()?, &p).map_err(|e| e.to_string())?;
    Ok(p)
}

fn needs(t: &'static str) -> Needs {
    if t == "unix" { Needs::Nothing } else { Needs::Target(t) }
}

pub fn cases(v: &mut Vec<Case>) {
    for t in ["unix", "hvt", "spt", "virtio"] {
        v.push(case(format!("{t}::mirage_run_boots_hello"), needs(t), move || {
            // Built by the same configure and build as the other tests'.
            example(t, "hello")?;
            let _lock = testkit::examples_lock();
            let mut args = vec!["run", "-t", t];
            if t != "unix" {
                args.extend(["--", "--solo5:quiet"]);
            }
            let r = tool(&examples_dir("hello"), &args)?;
            r.expect_status(0)?;
            if r.stdout.lines().filter(|l| *l == "hello").count() != 4 {
                return Err(format!("hello did not greet four times\n{}", r.dump()));
            }
            // mirage says what it runs.
            let image = if t == "unix" { "dist/hello".to_string() } else { format!("solo5-{t} ") };
            if !r.stderr.lines().any(|l| l.starts_with("mirage: ") && l.contains(&image)) {
                return Err(format!("mirage did not show the command it ran\n{}", r.dump()));
            }
            Ok(())
        }));
        v.push(case(format!("{t}::mirage_run_sets_up_and_removes_the_tap_device"), Needs::Net(t), move || {
            let keys: &[&str] = if t == "unix" { &["--net=direct"] } else { &[] };
            example_with(t, "network", keys)?;
            let ns = Netns::new()?;
            // The namespace's own tap0 holds 10.0.0.1/24: mirage gives that
            // address to the tap device it creates.
            ns.ip(&["link", "del", "tap0"])?;
            // Other tests configure the example too: hold the lock until
            // the unikernel runs.
            let lock = testkit::examples_lock();
            let mut configure = vec!["configure", "-t", t];
            configure.extend_from_slice(keys);
            tool(&examples_dir("network"), &configure)?.expect_status(0)?;
            let mut c = ns.command(mirage()?);
            c.arg("-C").arg(examples_dir("network")).args(["run", "-t", t, "--", "--ipv4=10.0.0.2/24"]);
            c.env("CARGO_TARGET_DIR", root().join("target/mirage"));
            let mut g = Background::start(c)?;
            g.wait_for("network: 10.0.0.2/24", Duration::from_secs(300))?;
            drop(lock);
            if !g.output().contains("--net:service=tap-service") {
                return Err(format!("the tap device was not attached:\n{}", g.output()));
            }
            let mtu = ns.command("cat").arg("/sys/class/net/tap-service/mtu").output().map_err(|e| e.to_string())?;
            // A virtio guest's MTU is 1500, and so is its tap's.
            let want = if t == "virtio" { "1500" } else { "65520" };
            if String::from_utf8_lossy(&mtu.stdout).trim() != want {
                return Err(format!("the tap device's MTU is {:?}, not {want}", String::from_utf8_lossy(&mtu.stdout)));
            }
            let mut p = ns.command("ping");
            p.args(["-c", "2", "-i", "0.2", "-W", "5", "10.0.0.2"]);
            run_with(p, Duration::from_secs(20))?.expect_status(0)?;
            crate::tcpip::tcp_echo_clients(&ns, "10.0.0.2:7".parse().unwrap(), 5, 1000)?;
            // SAFETY: kill(2) on our own child process.
            unsafe {
                libc::kill(g.child.id() as i32, libc::SIGTERM);
            }
            g.wait(Duration::from_secs(20))?;
            let links = ns.command("ip").args(["-br", "link"]).output().map_err(|e| e.to_string())?;
            let links = String::from_utf8_lossy(&links.stdout);
            if links.contains("tap-service") {
                return Err(format!("mirage left its tap device behind:\n{links}"));
            }
            Ok(())
        }));
    }
    for t in ["unix", "hvt", "spt"] {
        v.push(case(
            format!("{t}::a_new_users_unikernel_outside_the_checkout_serves_http"),
            Needs::Net(t),
            move || {
                // As a new user: mirage new in a directory of their own, then a
                // stack, an HTTP server and stores added by hand, configure,
                // build and run, on the tool's shared build cache.
                let scratch = Scratch::new("new-user");
                if scratch.0.starts_with(root()) {
                    return Err(format!("{} is inside the checkout", scratch.0.display()));
                }
                let dir = user_crate(
                    &scratch.0,
                    "site",
                    &[("mirage.toml", SITE_TOML), ("src/lib.rs", SITE_RS), ("htdocs/index.html", SITE_INDEX)],
                )?;
                add_dependency(&dir, "mirage-http")?;
                let run =
                    |args: &[&str]| run_with(cached(Command::new(mirage()?), &dir, args), Duration::from_secs(1200));
                let mut configure = vec!["configure", "-t", t];
                if t != "unix" {
                    configure.push("--no-dhcp");
                }
                run(&configure)?.expect_status(0)?;
                let built = run(&["build"])?;
                built.expect_status(0)?;
                // The generated wiring and the crate compile without a warning.
                if built.stderr.contains("warning") {
                    return Err(format!("the build warns:\n{}", built.dump()));
                }
                let cache = root().join("target/mirage-cache/target").join(t);
                if !cache.join("release").is_dir() || dir.join("mirage/target").exists() {
                    return Err(format!("the build did not go to the shared cache {}", cache.display()));
                }
                let ns = Netns::new()?;
                let url = if t == "unix" {
                    "http://127.0.0.1:8080/"
                } else {
                    ns.ip(&["link", "del", "tap0"])?;
                    "http://10.0.0.2:8080/"
                };
                let mut args = vec!["run"];
                if t != "unix" {
                    args.extend(["--", "--solo5:quiet"]);
                }
                let mut g = Background::start(cached(ns.command(mirage()?), &dir, &args))?;
                g.wait_for("site: boot 1, serving on port 8080", Duration::from_secs(120))?;
                let mut curl = ns.command("curl");
                curl.args(["-s", "-S", "--max-time", "10", url]);
                let r = run_with(curl, Duration::from_secs(20))?;
                r.expect_status(0)?;
                if r.stdout != SITE_INDEX {
                    return Err(format!("GET {url}:\n{}\n{}", r.dump(), g.output()));
                }
                // SAFETY: kill(2) on our own child process.
                unsafe {
                    libc::kill(g.child.id() as i32, libc::SIGTERM);
                }
                g.wait(Duration::from_secs(20))?;
                // On unix mirage run made the store's directory, and the
                // unikernel wrote to it.
                if t == "unix" && std::fs::read_to_string(dir.join("dist/state.kv/boots")).ok().as_deref() != Some("1")
                {
                    return Err(format!("dist/state.kv/boots does not hold 1:\n{}", g.output()));
                }
                Ok(())
            },
        ));
        v.push(case(format!("{t}::boot_arguments_mean_the_same_on_every_target"), needs(t), move || {
            example(t, "hello-key")?;
            let _lock = testkit::examples_lock();
            let dir = examples_dir("hello-key");
            // Each word after -- is one boot argument, quotes and all.
            for (word, greeting) in
                [("--hello=\"Hola Mundo!\"", "\"Hola Mundo!\""), ("--hello=Hola Mundo!", "Hola Mundo!")]
            {
                let mut args = vec!["run", "-t", t, "--", word];
                if t != "unix" {
                    // The bindings' options are taken after the
                    // unikernel's too.
                    args.push("--solo5:quiet");
                }
                let r = tool(&dir, &args)?;
                r.expect_status(0)?;
                if r.stdout.lines().filter(|l| *l == greeting).count() != 4 || r.stdout.contains("Solo5:") {
                    return Err(format!("{word} did not greet with {greeting}\n{}", r.dump()));
                }
            }
            // --help lists the log targets, and on Solo5 the bindings' options.
            let r = tool(&dir, &["run", "-t", t, "--", "--help"])?;
            r.expect_status(0)?;
            r.expect_stdout("Log targets")?;
            r.expect_stdout("  tcpip ")?;
            if t != "unix" {
                r.expect_stdout("--solo5:LEVEL")?;
            }
            Ok(())
        }));
    }
    v.push(case("unix::mirage_new_with_devices_builds_without_warnings_and_runs", Needs::Net("unix"), || {
        // Every device the template offers, each used by its lines, with
        // the dependencies it needs: built, run, and its data kept.
        let scratch = Scratch::new("with");
        tool(&scratch.0, &["new", "every", "--with=stack,kv-ro,kv-rw,block,random,wall-clock"])?.expect_status(0)?;
        let dir = scratch.0.join("every");
        tool(&dir, &["configure", "-t", "unix"])?.expect_status(0)?;
        let built = tool(&dir, &["build"])?;
        built.expect_status(0)?;
        if built.stderr.contains("warning") {
            return Err(format!("the template warns:\n{}", built.dump()));
        }
        for boot in ["every: boot 1", "every: boot 2"] {
            let r = tool(&dir, &["run"])?;
            r.expect_status(0)?;
            for line in [
                boot,
                "every: htdocs/index.html has ",
                "every: storage has 2048 sectors of 512 bytes",
                "Hello from every!",
            ] {
                r.expect_stdout(line)?;
            }
        }
        // The HTTP template: its dependencies follow (mirage-http), and it
        // serves htdocs/.
        tool(&scratch.0, &["new", "web", "--with=http"])?.expect_status(0)?;
        let dir = scratch.0.join("web");
        let toml = std::fs::read_to_string(dir.join("Cargo.toml")).map_err(|e| e.to_string())?;
        if !toml.lines().any(|l| l.starts_with("mirage-http = ")) {
            return Err(format!("the HTTP template does not depend on mirage-http:\n{toml}"));
        }
        tool(&dir, &["configure", "-t", "unix"])?.expect_status(0)?;
        let built = tool(&dir, &["build"])?;
        built.expect_status(0)?;
        if built.stderr.contains("warning") {
            return Err(format!("the template warns:\n{}", built.dump()));
        }
        let ns = Netns::new()?;
        let mut c = ns.command(mirage()?);
        c.arg("-C").arg(&dir).args(["run"]).env("CARGO_TARGET_DIR", root().join("target/mirage"));
        let mut g = Background::start(c)?;
        g.wait_for("web: serving htdocs/ on port 8080", Duration::from_secs(60))?;
        let mut curl = ns.command("curl");
        curl.args(["-s", "-S", "--max-time", "10", "http://127.0.0.1:8080/"]);
        let r = run_with(curl, Duration::from_secs(20))?;
        r.expect_status(0)?;
        r.expect_stdout("<h1>Hello from web!</h1>")?;
        // SAFETY: kill(2) on our own child process.
        unsafe {
            libc::kill(g.child.id() as i32, libc::SIGTERM);
        }
        g.wait(Duration::from_secs(20))?;
        let r = tool(&scratch.0, &["new", "bad", "--with=floppy"])?;
        expect_failure(&r, 64, "new: --with=floppy: nothing of that name", "choose among stack, http, kv-ro")
    }));
    let git = Needs::Program { name: "git", package: "git" };
    v.push(case("unix::a_unikernel_taking_the_libraries_from_git_builds_the_wiring_from_there_too", git, || {
        // The libraries from a git repository (a clone of this one, at
        // its HEAD): the wiring takes mirage-unix and mirage-runtime from
        // the same place, so both see one mirage-devices.
        let scratch = Scratch::new("git");
        let repo = scratch.0.join("mirage-rs.git");
        let clone = testkit::run(
            "git",
            &[
                std::ffi::OsStr::new("clone"),
                std::ffi::OsStr::new("--quiet"),
                std::ffi::OsStr::new("--bare"),
                root().as_os_str(),
                repo.as_os_str(),
            ],
        )?;
        clone.expect_status(0)?;
        let head = testkit::run("git", &["-C", &root().display().to_string(), "rev-parse", "HEAD"])?;
        head.expect_status(0)?;
        let rev = head.stdout.trim().to_string();
        let dir = user_crate(&scratch.0, "fromgit", &[])?;
        let toml = std::fs::read_to_string(dir.join("Cargo.toml")).map_err(|e| e.to_string())?;
        let devices = toml.lines().find(|l| l.starts_with("mirage-devices = ")).ok_or("no mirage-devices")?.to_string();
        let url = format!("file://{}", repo.display());
        let toml = toml.replace(&devices, &format!("mirage-devices = {{ git = \"{url}\", rev = \"{rev}\" }}"));
        std::fs::write(dir.join("Cargo.toml"), toml).map_err(|e| e.to_string())?;
        tool(&dir, &["configure", "-t", "unix"])?.expect_status(0)?;
        let wiring = std::fs::read_to_string(dir.join("mirage/unix/Cargo.toml")).map_err(|e| e.to_string())?;
        for library in ["mirage-runtime", "mirage-unix"] {
            let want = format!("{library} = {{ git = \"{url}\", rev = \"{rev}\"");
            if !wiring.contains(&want) {
                return Err(format!("the wiring does not take {library} from git:\n{wiring}"));
            }
        }
        tool(&dir, &["build"])?.expect_status(0)?;
        let r = tool(&dir, &["run", "--", "--greeting=from git"])?;
        r.expect_status(0)?;
        if r.stdout.lines().filter(|l| *l == "from git").count() != 4 {
            return Err(format!("the unikernel did not greet\n{}", r.dump()));
        }
        Ok(())
    }));
    v.push(case("spt::each_network_interface_has_its_own_subnet", Needs::Net("spt"), || {
        let scratch = Scratch::new("two-nets");
        let toml = "[unikernel]\nname = \"twonets\"\nstart = \"twonets::start\"\narguments = [\"console\", \"service\", \"admin\"]\n\n[devices]\nconsole = \"console\"\nservice = { kind = \"net\", interface = \"service\" }\nadmin = { kind = \"stack\", interface = \"admin\" }\n";
        let code = "#![no_std]\nextern crate alloc;\nuse mirage_devices::console::Console;\nuse mirage_devices::net::Net;\nuse mirage_devices::stack::{self, Stack};\n\n/// Raw frames on service (unused), a stack on admin.\npub async fn start(console: impl Console, service: impl Net, admin: impl Stack) -> Result<(), stack::Error> {\n    let _service = service;\n    let _listener = admin.listen(7, 4).await?;\n    let _ = console.log(&alloc::format!(\"twonets: admin {:?}\", admin.ipv4())).await;\n    core::future::pending::<()>().await;\n    Ok(())\n}\n";
        let dir = user_crate(&scratch.0, "twonets", &[("mirage.toml", toml), ("src/lib.rs", code)])?;
        tool(&dir, &["configure", "-t", "spt", "--no-dhcp"])?.expect_status(0)?;
        tool(&dir, &["build"])?.expect_status(0)?;
        let ns = Netns::new()?;
        ns.ip(&["link", "del", "tap0"])?;
        let mut c = ns.command(mirage()?);
        c.arg("-C").arg(&dir).args(["run", "--", "--solo5:quiet"]);
        c.env("CARGO_TARGET_DIR", root().join("target/mirage"));
        let mut g = Background::start(c)?;
        // The stack on the second interface defaults to its subnet.
        g.wait_for("twonets: admin Some((10.0.1.2, 24))", Duration::from_secs(60))?;
        let addrs = ns.command("ip").args(["-br", "addr"]).output().map_err(|e| e.to_string())?;
        let addrs = String::from_utf8_lossy(&addrs.stdout);
        let has = |tap: &str, addr: &str| addrs.lines().any(|l| l.starts_with(tap) && l.contains(addr));
        if !has("tap-service", "10.0.0.1/24") || !has("tap-admin", "10.0.1.1/24") {
            return Err(format!("the taps do not have a subnet each:\n{addrs}\n{}", g.output()));
        }
        let mut p = ns.command("ping");
        p.args(["-c", "2", "-i", "0.2", "-W", "5", "10.0.1.2"]);
        run_with(p, Duration::from_secs(20))?.expect_status(0)?;
        // SAFETY: kill(2) on our own child process.
        unsafe {
            libc::kill(g.child.id() as i32, libc::SIGTERM);
        }
        g.wait(Duration::from_secs(20))?;
        Ok(())
    }));
    v.push(case("unix::start_is_checked_against_mirage_toml", Needs::Nothing, || {
        let scratch = Scratch::new("typed");
        let dir = user_crate(&scratch.0, "typed", &[])?;
        // Not configured yet: the fix names real targets.
        let r = tool(&dir, &["build"])?;
        expect_failure(&r, 1, "typed is not configured", "run `mirage configure -t unix` (or -t hvt, -t spt) first")?;
        let toml = std::fs::read_to_string(dir.join("mirage.toml")).map_err(|e| e.to_string())?;
        // `start` alone would be the wiring's own function: refused at
        // configure time, not by rustc.
        std::fs::write(dir.join("mirage.toml"), toml.replace("start = \"typed::start\"", "start = \"start\"")).map_err(|e| e.to_string())?;
        let r = tool(&dir, &["configure"])?;
        r.expect_status(1)?;
        r.expect_stderr("start = \"start\" is not a function of the unikernel crate typed")?;
        r.expect_stderr("fix: name it from the crate root, as in start = \"typed::start\"")?;
        std::fs::write(dir.join("mirage.toml"), &toml).map_err(|e| e.to_string())?;
        tool(&dir, &["configure"])?.expect_status(0)?;
        // A start that takes another type than mirage.toml declares: the
        // error names the argument and mirage.toml.
        let lib = "#![no_std]\nuse mirage_devices::console::Console;\nuse mirage_devices::time::Sleep;\n\n/// Takes its greeting as a number.\npub async fn start(console: impl Console, time: impl Sleep, greeting: u32) {\n    let _ = (console, time, greeting);\n}\n";
        std::fs::write(dir.join("src/lib.rs"), lib).map_err(|e| e.to_string())?;
        let r = tool(&dir, &["build"])?;
        r.expect_status(1)?;
        r.expect_stderr("rustc's errors point into the wiring mirage/unix/main.rs, where mirage.toml and start disagree")?;
        r.expect_stderr("start's argument 3 is the boot argument greeting, declared at mirage.toml:14 with type = \"string\": the wiring gives start a `&str` there")?;
        r.expect_stderr("fix: make mirage.toml and start agree")?;
        if r.stderr.contains("TARGET") {
            return Err(format!("a placeholder is left in the messages:\n{}", r.dump()));
        }
        Ok(())
    }));
    v.push(case(
        "hvt::mirage_build_keeps_a_debug_file_gdb_reads_beside_the_image",
        Needs::All(&[Needs::Target("hvt"), Needs::Program { name: "gdb", package: "gdb" }]),
        || {
            let image = example("hvt", "hello")?;
            let debug = image.with_file_name("hello.hvt.debug");
            let (img, dbg) = (
                std::fs::read(&image).map_err(|e| e.to_string())?,
                std::fs::read(&debug).map_err(|e| format!("{}: {e}", debug.display()))?,
            );
            // The image is the debug file cut after its last segment: the
            // same program, none of the debug information.
            if img.len() >= dbg.len() || img[64..] != dbg[64..img.len()] {
                return Err(format!("{} is not {} trimmed", image.display(), debug.display()));
            }
            let mut c = Command::new(testkit::tender("hvt"));
            c.args(["--gdb", "--gdb-port=0"]).arg(&image);
            let mut bg = Background::start(c)?;
            let port = testkit::gdb_port(&mut bg)?;
            let mut g = Command::new("gdb");
            g.args(["-batch", "-nx"]);
            for cmd in [
                &format!("target remote localhost:{port}"),
                "break hello/src/lib.rs:12",
                "continue",
                "bt",
                "delete",
                "continue",
            ] {
                g.arg("-ex").arg(cmd);
            }
            g.arg(&debug);
            let r = run_with(g, Duration::from_secs(60))?;
            let out = format!("{}{}", r.stdout, r.stderr);
            for want in [
                "Breakpoint 1, hello::start::{async_fn#0}",
                "lib.rs:12",
                "console.log(\"hello\")",
                "mirage_runtime::exec::run",
                "exited normally",
            ] {
                if !out.contains(want) {
                    return Err(format!("gdb's output lacks {want:?}:\n{out}\n{}", bg.output()));
                }
            }
            let status = bg.wait(Duration::from_secs(30))?;
            if status != 0 {
                return Err(format!("the tender exited with {status}\n{}", bg.output()));
            }
            Ok(())
        },
    ));
    v.push(case("mirage_clean_keeps_data", Needs::Nothing, || {
        let scratch = Scratch::new("clean");
        let toml = "[unikernel]\nname = \"keep\"\nstart = \"keep::start\"\narguments = [\"storage\", \"htdocs\", \"state\", \"db\"]\n\n[devices]\nstorage = \"block\"\nhtdocs = { kind = \"kv-ro\", directory = \"htdocs\", store = \"tar\" }\nstate = \"kv-rw\"\ndb = { kind = \"kv-rw\", store = \"block\" }\n";
        let dir = user_crate(&scratch.0, "keep", &[("mirage.toml", toml), ("htdocs/index.html", "hi")])?;
        let dist = dir.join("dist");
        std::fs::create_dir_all(dist.join("state.kv")).map_err(|e| e.to_string())?;
        for f in ["keep", "keep.hvt", "keep.hvt.debug", "keep.spt", "htdocs.img", "storage.img", "state.kv/key", "db.img"] {
            std::fs::write(dist.join(f), f).map_err(|e| e.to_string())?;
        }
        std::fs::create_dir_all(dir.join("mirage/unix")).map_err(|e| e.to_string())?;
        let r = tool(&dir, &["clean"])?;
        r.expect_status(0)?;
        r.expect_stdout("kept dist/db.img, dist/state.kv, dist/storage.img")?;
        for gone in ["keep", "keep.hvt", "keep.hvt.debug", "keep.spt", "htdocs.img"] {
            if dist.join(gone).exists() {
                return Err(format!("clean left dist/{gone}\n{}", r.dump()));
            }
        }
        // The block device's disk and the kv-rw stores are data.
        if std::fs::read_to_string(dist.join("storage.img")).ok().as_deref() != Some("storage.img")
            || std::fs::read_to_string(dist.join("db.img")).ok().as_deref() != Some("db.img")
            || !dist.join("state.kv/key").is_file()
            || dir.join("mirage").exists()
        {
            return Err(format!("clean removed data, or left the wiring\n{}", r.dump()));
        }
        Ok(())
    }));
    v.push(case("spt::mirage_build_makes_the_tar_image_of_a_store_and_run_attaches_it", Needs::Net("spt"), || {
        let keys = ["--kv-ro=tar"];
        example_with("spt", "static-website", &keys)?;
        let ns = Netns::new()?;
        ns.ip(&["link", "del", "tap0"])?;
        let lock = testkit::examples_lock();
        let dir = examples_dir("static-website");
        tool(&dir, &["configure", "-t", "spt", "--kv-ro=tar"])?.expect_status(0)?;
        let built = tool(&dir, &["build"])?;
        built.expect_status(0)?;
        built.expect_stdout("made dist/htdocs.img")?;
        // GNU tar reads what mirage wrote.
        let listing =
            Command::new("tar").arg("-tf").arg(dir.join("dist/htdocs.img")).output().map_err(|e| e.to_string())?;
        let listing = String::from_utf8_lossy(&listing.stdout);
        for f in ["index.html", "css/site.css", "docs/index.html"] {
            if !listing.lines().any(|l| l == f) {
                return Err(format!("{f} is not in the disk image:\n{listing}"));
            }
        }
        // The tool reports what the image holds: the tar store is a block
        // device of its manifest, as solo5-elftool reads it.
        let elftool = testkit::run(
            testkit::tender("elftool"),
            &[std::ffi::OsStr::new("query-manifest"), dir.join("dist/static-website.spt").as_os_str()],
        )?;
        elftool.expect_status(0)?;
        let query = tool(&dir, &["query", "manifest"])?;
        query.expect_status(0)?;
        if manifest_names(&query.stdout) != manifest_names(&elftool.stdout)
            || !manifest_names(&query.stdout).contains(&"htdocs".to_string())
        {
            return Err(format!(
                "mirage query manifest:\n{}\nsolo5-elftool query-manifest:\n{}",
                query.stdout, elftool.stdout
            ));
        }
        let mut c = ns.command(mirage()?);
        c.arg("-C").arg(&dir).args(["run", "-t", "spt", "--", "--solo5:quiet", "--ipv4=10.0.0.2/24"]);
        c.env("CARGO_TARGET_DIR", root().join("target/mirage"));
        let mut g = Background::start(c)?;
        g.wait_for("static-website: serving", Duration::from_secs(300))?;
        drop(lock);
        if !g.output().contains("--block:htdocs=") {
            return Err(format!("the disk image was not attached:\n{}", g.output()));
        }
        let mut curl = ns.command("curl");
        curl.args(["-s", "-S", "--max-time", "10", "http://10.0.0.2/docs/"]);
        let r = run_with(curl, Duration::from_secs(20))?;
        r.expect_status(0)?;
        let want = std::fs::read_to_string(dir.join("htdocs/docs/index.html")).map_err(|e| e.to_string())?;
        if r.stdout != want {
            return Err(format!("/docs/ from the tar image:\n{}", r.dump()));
        }
        // SAFETY: kill(2) on our own child process.
        unsafe {
            libc::kill(g.child.id() as i32, libc::SIGTERM);
        }
        g.wait(Duration::from_secs(20))?;
        Ok(())
    }));
    v.push(case("hvt::mirage_build_formats_the_image_of_a_kv_rw_store_and_run_attaches_it", Needs::Net("hvt"), || {
        example_with("hvt", "kv-server", &[])?;
        let ns = Netns::new()?;
        ns.ip(&["link", "del", "tap0"])?;
        let lock = testkit::examples_lock();
        let dir = examples_dir("kv-server");
        let image = dir.join("dist/data.img");
        let _ = std::fs::remove_file(&image);
        tool(&dir, &["configure", "-t", "hvt"])?.expect_status(0)?;
        let built = tool(&dir, &["build"])?;
        built.expect_status(0)?;
        built.expect_stdout("made dist/data.img (a kv-rw store) for store data")?;
        // A second build leaves the data alone.
        let source = dir.join("Cargo.toml").display().to_string();
        tool(&dir, &["kv", "put", &image.display().to_string(), "/before", &source])?.expect_status(0)?;
        let again = tool(&dir, &["build"])?;
        again.expect_status(0)?;
        if again.stdout.contains("made dist/data.img") {
            return Err(format!("a second build made the image again:\n{}", again.dump()));
        }
        let mut c = ns.command(mirage()?);
        c.arg("-C").arg(&dir).args(["run", "-t", "hvt", "--", "--solo5:quiet", "--ipv4=10.0.0.2/24"]);
        c.env("CARGO_TARGET_DIR", root().join("target/mirage"));
        let mut g = Background::start(c)?;
        g.wait_for("kv-server: serving", Duration::from_secs(300))?;
        // A durable store (the default): attached so that flushes sync.
        if !g.output().contains("--block-dsync:data=") {
            return Err(format!("the disk image was not attached with --block-dsync:\n{}", g.output()));
        }
        let mut curl = ns.command("curl");
        curl.args([
            "-s",
            "-S",
            "--max-time",
            "10",
            "-X",
            "PUT",
            "--data-binary",
            "hello",
            "http://10.0.0.2/kv/greeting",
        ]);
        run_with(curl, Duration::from_secs(20))?.expect_status(0)?;
        let mut curl = ns.command("curl");
        curl.args(["-s", "-S", "--max-time", "10", "http://10.0.0.2/kv/before"]);
        let before = run_with(curl, Duration::from_secs(20))?;
        let want = std::fs::read_to_string(dir.join("Cargo.toml")).map_err(|e| e.to_string())?;
        if before.stdout != want {
            return Err(format!("GET /kv/before (stored from the host): {}", before.dump()));
        }
        // SAFETY: kill(2) on our own child process.
        unsafe {
            libc::kill(g.child.id() as i32, libc::SIGTERM);
        }
        g.wait(Duration::from_secs(20))?;
        let got = tool(&dir, &["kv", "get", &image.display().to_string(), "/greeting"])?;
        drop(lock);
        got.expect_status(0)?;
        if got.stdout != "hello" {
            return Err(format!("mirage kv get after the run: {}", got.dump()));
        }
        Ok(())
    }));
    // Without Graphviz the harness says SKIPPED, as for every tool a test
    // needs that the machine lacks.
    let graphviz = Needs::Program { name: "dot", package: "graphviz" };
    v.push(case("mirage_describe_renders_with_graphviz_for_every_example", graphviz, || {
        let scratch = Scratch::new("describe");
        let _lock = testkit::examples_lock();
        let examples = [
            "hello",
            "hello-key",
            "block",
            "kv-ro",
            "ping",
            "network",
            "static-website",
            "static-website-tls",
            "tls-client",
            "kv-server",
        ];
        for ex in examples {
            for t in ["unix", "hvt"] {
                tool(&examples_dir(ex), &["configure", "-t", t])?.expect_status(0)?;
                let text = tool(&examples_dir(ex), &["describe", "-t", t])?;
                text.expect_status(0)?;
                text.expect_stdout("start: ")?;
                if ex == "static-website-tls" {
                    text.expect_stdout(
                        "tls device: mirage_tls::Server on stack stack, certificates in / of store certs",
                    )?;
                    text.expect_stdout("read by TLS device tls before start")?;
                }
                let dot = tool(&examples_dir(ex), &["describe", "-t", t, "--dot"])?;
                dot.expect_status(0)?;
                let file = scratch.0.join(format!("{ex}-{t}.dot"));
                std::fs::write(&file, &dot.stdout).map_err(|e| e.to_string())?;
                let out = Command::new("dot").arg("-Tsvg").arg(&file).output().map_err(|e| e.to_string())?;
                if !out.status.success() || !String::from_utf8_lossy(&out.stdout).contains("<svg") {
                    return Err(format!(
                        "{ex} on {t}: dot cannot render\n{}\n{}",
                        dot.stdout,
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
                let svg = scratch.0.join(format!("{ex}-{t}.svg"));
                let r = tool(&examples_dir(ex), &["describe", "-t", t, &format!("--svg={}", svg.display())])?;
                r.expect_status(0)?;
                if !std::fs::read_to_string(&svg).unwrap_or_default().contains("<svg") {
                    return Err(format!("{ex} on {t}: --svg wrote no SVG"));
                }
            }
        }
        let r = tool(&examples_dir("network"), &["describe", "-t", "hvt"])?;
        r.expect_stdout("stack device: mirage_tcpip::Stack on mirage_solo5::dev::Net (Solo5 NET_BASIC \"service\")")?;
        Ok(())
    }));
    v.push(case("mirage_query_answers", Needs::Nothing, || {
        let _lock = testkit::examples_lock();
        let dir = examples_dir("block");
        tool(&dir, &["configure", "-t", "spt"])?.expect_status(0)?;
        let r = tool(&dir, &["query", "name"])?;
        r.expect_status(0)?;
        if r.stdout.trim() != "block" {
            return Err(r.dump());
        }
        let r = tool(&dir, &["query", "manifest"])?;
        r.expect_stdout("{ \"name\": \"storage\", \"type\": \"BLOCK_BASIC\" }")?;
        let r = tool(&dir, &["query", "files"])?;
        r.expect_stdout("mirage/spt/main.rs")?;
        r.expect_stdout("dist/block.spt")?;
        let r = tool(&dir, &["query", "packages"])?;
        r.expect_stdout("mirage-solo5")?;
        let r = tool(&dir, &["query", "colour"])?;
        expect_failure(&r, 64, "query: unknown question \"colour\"", "ask name, target, files, manifest or packages")
    }));
    v.push(case("unix::mirage_new_makes_a_unikernel_that_builds_and_runs", Needs::Nothing, || {
        let scratch = Scratch::new("new");
        let r = tool(&scratch.0, &["new", "demo-app"])?;
        r.expect_status(0)?;
        let dir = scratch.0.join("demo-app");
        tool(&dir, &["configure", "-t", "unix"])?.expect_status(0)?;
        let r = tool(&dir, &["build"])?;
        r.expect_status(0)?;
        r.expect_stdout("built dist/demo-app")?;
        let r = tool(&dir, &["run", "--", "--greeting=bonjour"])?;
        r.expect_status(0)?;
        if r.stdout.lines().filter(|l| *l == "bonjour").count() != 4 {
            return Err(format!("the new unikernel did not greet\n{}", r.dump()));
        }
        let r = tool(&dir, &["clean"])?;
        r.expect_status(0)?;
        if dir.join("dist").exists() || dir.join("mirage").exists() {
            return Err("clean left files behind".into());
        }
        let r = tool(&scratch.0, &["new", "demo-app"])?;
        expect_failure(
            &r,
            1,
            &format!("{} exists already", scratch.0.join("demo-app").display()),
            "choose another name, or remove it",
        )
    }));
    v.push(case("spt::mirage_builds_two_unikernels_of_one_name_in_one_target_directory", Needs::Target("spt"), || {
        // Two copies of kv-ro whose data differ, built in turn into the
        // shared target directory. Each generated project is a workspace
        // of its own, and cargo tells packages apart by their path inside
        // it: the copies' build scripts would share one output directory,
        // and one image would hold the other's files.
        let scratch = Scratch::new("twins");
        for (side, word) in [("a", "first"), ("b", "second"), ("a", "first")] {
            let dir = scratch.0.join(side).join("kv-ro");
            if !dir.exists() {
                copy_kv_ro(&dir)?;
                std::fs::write(dir.join("data/secret"), word).map_err(|e| e.to_string())?;
            }
            tool(&dir, &["configure", "-t", "spt"])?.expect_status(0)?;
            tool(&dir, &["build"])?.expect_status(0)?;
            let mut c = Command::new(testkit::tender("spt"));
            c.arg(dir.join("dist/kv-ro.spt")).arg("--solo5:quiet");
            let r = run_with(c, Duration::from_secs(20))?;
            r.expect_status(0)?;
            if !r.stdout.contains(&format!("secret: {word}\n")) {
                return Err(format!("{side}/kv-ro does not hold its own data:\n{}", r.dump()));
            }
        }
        Ok(())
    }));
    v.push(case("spt::a_kv_ro_fat_image_is_made_once_shared_with_mtools_and_kept", Needs::Target("spt"), || {
        // store = "fat": mirage build makes dist/data.img from data/ when it
        // is missing; the host's mtools read and change it; the unikernel
        // serves what is there; a later build and clean leave it alone.
        let scratch = Scratch::new("kv-ro-fat");
        let dir = scratch.0.join("kv-ro");
        copy_kv_ro(&dir)?;
        let toml = std::fs::read_to_string(dir.join("mirage.toml")).map_err(|e| e.to_string())?;
        let fat = toml.replace("directory = \"data\" }", "directory = \"data\", store = \"fat\" }");
        if fat == toml {
            return Err(format!("the kv-ro example's mirage.toml changed:\n{toml}"));
        }
        std::fs::write(dir.join("mirage.toml"), fat).map_err(|e| e.to_string())?;
        tool(&dir, &["configure", "-t", "spt"])?.expect_status(0)?;
        tool(&dir, &["build"])?.expect_stdout("(a FAT volume of data) for store data")?;
        let disk = dir.join("dist/data.img");
        let mtools = |args: &[&str]| -> Result<String, String> {
            let out = Command::new(args[0])
                .args(&args[1..])
                .output()
                .map_err(|e| format!("{}: {e} (install mtools)", args[0]))?;
            if !out.status.success() {
                return Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr)));
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let d = disk.to_str().unwrap_or_default();
        let secret = mtools(&["mtype", "-i", d, "::/secret"])?;
        if !secret.contains("42") {
            return Err(format!("mtype read {secret:?} from the image mirage build made"));
        }
        let added = scratch.0.join("added");
        std::fs::write(&added, "put there by mcopy").map_err(|e| e.to_string())?;
        mtools(&["mcopy", "-i", d, added.to_str().unwrap_or_default(), "::/A name mcopy gave.txt"])?;
        tool(&dir, &["build"])?.expect_status(0)?;
        let boot = || -> Result<Run, String> {
            let mut c = Command::new(testkit::tender("spt"));
            c.arg(format!("--block:data={d}")).arg(dir.join("dist/kv-ro.spt")).arg("--solo5:quiet");
            run_with(c, Duration::from_secs(20))
        };
        let r = boot()?;
        r.expect_status(0)?;
        r.expect_stdout("secret: The answer is 42.")?;
        r.expect_stdout("/A name mcopy gave.txt: 18 bytes")?;
        let r = tool(&dir, &["clean"])?;
        r.expect_status(0)?;
        r.expect_stdout("kept dist/data.img")?;
        if !disk.is_file() {
            return Err("mirage clean removed the FAT image".into());
        }
        Ok(())
    }));
    v.push(case("hvt::an_image_larger_than_2_mib_boots", Needs::Target("hvt"), || {
        // The boot code maps the image with 2 MiB pages before the real
        // tables exist: a 5 MB file compiled in spans three of them.
        let scratch = Scratch::new("big-image");
        let dir = scratch.0.join("kv-ro");
        copy_kv_ro(&dir)?;
        let big = testkit::noise(0x9e37_79b9_7f4a_7c15, 5_000_000);
        std::fs::write(dir.join("data/big.bin"), &big).map_err(|e| e.to_string())?;
        tool(&dir, &["configure", "-t", "hvt"])?.expect_status(0)?;
        tool(&dir, &["build"])?.expect_status(0)?;
        let image = dir.join("dist/kv-ro.hvt");
        if std::fs::metadata(&image).map(|m| m.len()).unwrap_or(0) < 5_000_000 {
            return Err("the image does not hold the 5 MB file".into());
        }
        let sum = Command::new("sha256sum").arg(dir.join("data/big.bin")).output().map_err(|e| e.to_string())?;
        let sum = String::from_utf8_lossy(&sum.stdout).split_whitespace().next().unwrap_or("").to_string();
        let mut c = Command::new(testkit::tender("hvt"));
        c.arg(&image).arg("--solo5:quiet");
        let r = run_with(c, Duration::from_secs(30))?;
        r.expect_status(0)?;
        r.expect_stdout(&format!("/big.bin: 5000000 bytes, sha256 {sum}"))
    }));
    v.push(case("mirage_errors_give_a_cause_and_a_fix", Needs::Nothing, || {
        let scratch = Scratch::new("errors");
        let r = tool(&examples_dir("hello"), &["configure", "-t", "xen"])?;
        expect_failure(&r, 64, "unknown target \"xen\"", "use -t unix, -t hvt, -t spt or -t virtio")?;
        let r = tool(&examples_dir("hello"), &["configur"])?;
        expect_failure(&r, 64, "unknown command \"configur\"", "use one of configure")?;
        let r = tool(&examples_dir("hello"), &["build", "--fast"])?;
        expect_failure(&r, 64, "build: unknown option --fast", "see `mirage build --help`")?;
        let r = tool(&scratch.0, &["configure"])?;
        r.expect_status(1)?;
        r.expect_stderr("mirage.toml: cannot read it")?;
        r.expect_stderr("fix: run mirage in the unikernel's directory (the one with mirage.toml), or start one with `mirage new NAME`")?;
        // A device declared twice, and a bad kind: the line and the fix.
        let dir = scratch.0.join("twice");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("Cargo.toml"), "[package]\nname = \"twice\"\n").map_err(|e| e.to_string())?;
        let toml = "[unikernel]\nname = \"twice\"\nstart = \"twice::start\"\narguments = [\"console\"]\n\n[devices]\nconsole = \"console\"\nconsole = \"console\"\n";
        std::fs::write(dir.join("mirage.toml"), toml).map_err(|e| e.to_string())?;
        let r = tool(&dir, &["configure"])?;
        r.expect_status(1)?;
        r.expect_stderr("mirage.toml:8: duplicate key")?;
        r.expect_stderr("fix: declare each device and argument once")?;
        std::fs::write(dir.join("mirage.toml"), toml.replace("console = \"console\"\nconsole", "console = \"consol\"\nother")).map_err(|e| e.to_string())?;
        let r = tool(&dir, &["configure"])?;
        r.expect_stderr("mirage.toml:7: unknown device kind \"consol\"")?;
        r.expect_stderr("fix: use one of console, time")?;
        // Two devices on one network interface.
        std::fs::write(
            dir.join("mirage.toml"),
            "[unikernel]\nname = \"twice\"\nstart = \"twice::start\"\narguments = [\"a\", \"b\"]\n\n[devices]\na = { kind = \"net\" }\nb = { kind = \"stack\" }\n",
        )
        .map_err(|e| e.to_string())?;
        let r = tool(&dir, &["configure"])?;
        r.expect_stderr("mirage.toml:8: devices a and b are both on the network device \"service\": a device declared twice")?;
        // Not configured.
        std::fs::write(dir.join("mirage.toml"), toml.replace("console = \"console\"\nconsole = \"console\"\n", "console = \"console\"\n"))
            .map_err(|e| e.to_string())?;
        let r = tool(&dir, &["build", "-t", "spt"])?;
        r.expect_status(1)?;
        r.expect_stderr("twice is not configured for spt")?;
        r.expect_stderr("fix: run `mirage configure -t spt` first")?;
        Ok(())
    }));
    v.push(case("spt::mirage_run_without_a_tender_says_where_it_looked", Needs::Target("spt"), || {
        example("spt", "hello")?;
        let scratch = Scratch::new("lone");
        let lone = lone_mirage(&scratch)?;
        let _lock = testkit::examples_lock();
        let mut c = Command::new(lone);
        c.arg("-C").arg(examples_dir("hello")).args(["run", "-t", "spt"]).env("PATH", "/nonexistent");
        let r = run_with(c, Duration::from_secs(30))?;
        expect_failure(&r, 1, "no solo5-spt tender found", "build the tenders with `cargo build --release`")
    }));
    v.push(case("hvt::mirage_run_without_kvm_access_says_so", Needs::Target("hvt"), || {
        example("hvt", "hello")?;
        let _lock = testkit::examples_lock();
        // An unprivileged user cannot open /dev/kvm (mode 0600 here).
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(mirage()?);
        c.arg("-C").arg(examples_dir("hello")).args(["run", "-t", "hvt"]);
        let r = run_with(c, Duration::from_secs(30))?;
        if std::fs::metadata("/dev/kvm")
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o006 != 0)
            .unwrap_or(false)
        {
            return Err("/dev/kvm is open to every user here: this test cannot provoke the error".into());
        }
        expect_failure(&r, 1, "no access to /dev/kvm", "add yourself to the kvm group")
    }));
    v.push(case("spt::mirage_run_without_the_right_to_create_a_tap_says_what_to_run", Needs::Net("spt"), || {
        example("spt", "network")?;
        let ns = Netns::new()?;
        let _lock = testkit::examples_lock();
        tool(&examples_dir("network"), &["configure", "-t", "spt"])?.expect_status(0)?;
        // An unprivileged user on spt: no /dev/kvm needed, so the tap
        // device is the first thing to fail.
        let mut c = ns.command("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(mirage()?);
        c.arg("-C").arg(examples_dir("network")).args(["run", "-t", "spt"]);
        let r = run_with(c, Duration::from_secs(30))?;
        expect_failure(
            &r,
            1,
            "no right to create the tap device tap-service",
            "run mirage as root, or create it first: sudo ip tuntap add tap-service mode tap user $USER && sudo ip addr add 10.0.0.1/24 dev tap-service && sudo ip link set tap-service mtu 65520 up",
        )
    }));
}

/// The device names of a Solo5 manifest in JSON, in order.
fn manifest_names(json: &str) -> Vec<String> {
    json.split("\"name\": \"").skip(1).filter_map(|r| r.split('"').next()).map(String::from).collect()
}

/// A unikernel crate as a user makes one: `mirage new NAME` in `parent`
/// (outside this repository), then the files the user writes over the
/// template's (`files`: path and text). Its directory.
fn user_crate(parent: &Path, name: &str, files: &[(&str, &str)]) -> Result<PathBuf, String> {
    tool(parent, &["new", name])?.expect_status(0)?;
    let dir = parent.join(name);
    for (path, text) in files {
        let p = dir.join(path);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
        }
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(dir)
}

/// Uncomments the template's dependency on `library` in `dir/Cargo.toml`,
/// as its comment invites.
fn add_dependency(dir: &Path, library: &str) -> Result<(), String> {
    let path = dir.join("Cargo.toml");
    let toml = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
    let prefix = format!("# {library} = ");
    let Some(line) = toml.lines().find(|l| l.starts_with(&prefix)) else {
        return Err(format!("the template has no line for {library}:\n{toml}"));
    };
    let dependency = line.trim_start_matches("# ").split("  #").next().unwrap_or_default();
    std::fs::write(&path, toml.replace(line, dependency)).map_err(|e| e.to_string())
}

/// The site a new user writes: an HTTP server over a stack, serving a kv-ro
/// store and counting its boots in a kv-rw one.
const SITE_TOML: &str = r#"[unikernel]
name = "site"
start = "site::start"
arguments = ["console", "stack", "htdocs", "state", "clock", "port"]

[devices]
console = "console"
stack = "stack"
htdocs = { kind = "kv-ro", directory = "htdocs" }
state = "kv-rw"
clock = "wall-clock"

[boot.port]
type = "u16"
default = 8080
doc = "The HTTP port."
"#;

const SITE_RS: &str = r#"//! site: serves htdocs/ over HTTP and counts its boots.
#![no_std]

extern crate alloc;

use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;

use mirage_devices::console::Console;
use mirage_devices::kv::{Key, KvRo, KvRw};
use mirage_devices::stack::Stack;
use mirage_devices::time::WallClock;
use mirage_http::{Limits, Static, Stats};

/// The unikernel.
pub async fn start<S, K, W>(console: impl Console, stack: S, htdocs: K, state: impl KvRw, clock: W, port: u16) -> Result<(), String>
where
    S: Stack,
    S::Flow: 'static,
    K: KvRo + 'static,
    W: WallClock + 'static,
{
    let key = Key::parse("boots").map_err(|e| format!("{e}"))?;
    let before = state.get(&key).await.ok().and_then(|v| core::str::from_utf8(&v).ok()?.parse::<u32>().ok());
    let boots = before.unwrap_or(0) + 1;
    state.set(&key, format!("{boots}").as_bytes()).await.map_err(|e| format!("state: {e}"))?;
    let listener = stack.listen(port, 16).await.map_err(|e| format!("{e}"))?;
    let _ = console.log(&format!("site: boot {boots}, serving on port {port}")).await;
    let handler = Rc::new(Static::new(Rc::new(htdocs)));
    let e = mirage_http::serve(listener, handler, Rc::new(Limits::default()), Rc::new(clock), Rc::new(Stats::default())).await;
    Err(format!("{e}"))
}
"#;

const SITE_INDEX: &str = "<h1>A site made with mirage new</h1>\n";

/// `mirage ARGS` in `dir` with the tool's own build cache (one target
/// directory per target under MIRAGE_CACHE), as a user runs it.
fn cached(mut c: Command, dir: &Path, args: &[&str]) -> Command {
    c.arg("-C").arg(dir).args(args);
    c.env_remove("CARGO_TARGET_DIR").env("MIRAGE_CACHE", root().join("target/mirage-cache"));
    c
}

/// A copy of the kv-ro example at `dir`, its dependencies pointing at this
/// repository.
fn copy_kv_ro(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir.join("data/sub")).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir.join("src")).map_err(|e| e.to_string())?;
    let src = examples_dir("kv-ro");
    for f in ["mirage.toml", "src/lib.rs", "data/secret", "data/sub/hello.txt"] {
        std::fs::copy(src.join(f), dir.join(f)).map_err(|e| format!("{f}: {e}"))?;
    }
    let manifest = std::fs::read_to_string(src.join("Cargo.toml")).map_err(|e| e.to_string())?;
    // Outside the workspace there are no workspace lints to inherit.
    let manifest = manifest
        .replace("../../crates", &root().join("crates").display().to_string())
        .replace("[lints]\nworkspace = true\n", "");
    std::fs::write(dir.join("Cargo.toml"), manifest).map_err(|e| e.to_string())
}
