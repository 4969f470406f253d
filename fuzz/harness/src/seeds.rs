//! The starting corpus of each target, made by program: Solo5 executables
//! and manifests built from the ABI's own definitions, archives from the
//! project's tar writer, frames built by smoltcp, requests and command
//! lines as clients and tenders send them. `fuzz/run seeds` writes them
//! to `fuzz/corpus/TARGET/NAME`; the harness tests check that the corpus
//! in the repository is what this makes.

use mirage_kv::tar::write_archive;
use solo5_abi::mft::{MFT_VERSION, MftEntry, MftType};
use solo5_abi::note::{ABI1_NOTE_ALIGN, ABI1_NOTE_TYPE, MFT1_NOTE_ALIGN, MFT1_NOTE_TYPE};
use zerocopy::IntoBytes;

/// A seed: target, name, bytes.
pub type Seed = (&'static str, &'static str, Vec<u8>);

/// Every target's seeds.
pub fn all() -> Vec<Seed> {
    let mut seeds = Vec::new();
    seeds.extend(elf());
    seeds.extend(manifest());
    seeds.extend(crate::hypercall::seeds());
    seeds.extend(http());
    seeds.extend(tar());
    seeds.extend(crate::kv_store::seed_images().into_iter().map(|(name, image)| ("kv_store", name, image)));
    seeds.extend(crate::fat::seed_images().into_iter().map(|(name, image)| ("fat", name, image)));
    seeds.extend(wire());
    seeds.extend(args());
    seeds.extend(gdb_remote());
    seeds.extend(dhcpd());
    seeds.extend(crate::nat::seeds());
    seeds.extend(crate::stack::seeds());
    seeds.extend(blobs("http_request", 6));
    seeds.extend(blobs("tar_roundtrip", 6));
    seeds
}

/// Inputs for targets that build their own structure from any bytes
/// (`arbitrary`): fixed pseudo-random blobs of a few lengths.
pub(crate) fn blobs(target: &'static str, n: usize) -> Vec<Seed> {
    const NAMES: [&str; 8] = ["blob-0", "blob-1", "blob-2", "blob-3", "blob-4", "blob-5", "blob-6", "blob-7"];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ target.len() as u64;
    (0..n.min(NAMES.len()))
        .map(|i| {
            let len = 64 << i;
            let bytes = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            (target, NAMES[i], bytes)
        })
        .collect()
}

/// An ELF note as Solo5 lays it out: header, name, padding to `align`
/// after the 20-byte header, content.
pub fn note(ntype: u32, desc: &[u8], align: usize) -> Vec<u8> {
    let pad = 20usize.div_ceil(align) * align - 20;
    let mut n = Vec::new();
    n.extend_from_slice(&6u32.to_le_bytes());
    n.extend_from_slice(&((pad + desc.len()) as u32).to_le_bytes());
    n.extend_from_slice(&ntype.to_le_bytes());
    n.extend_from_slice(b"Solo5\0\0\0");
    n.resize(n.len() + pad, 0);
    n.extend_from_slice(desc);
    n
}

/// The bytes of a manifest of `devices` after the reserved first entry.
pub fn manifest_bytes(devices: &[(&str, MftType)]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&MFT_VERSION.to_le_bytes());
    m.extend_from_slice(&(devices.len() as u32 + 1).to_le_bytes());
    m.extend_from_slice(MftEntry::reserved_first().as_bytes());
    for (name, t) in devices {
        m.extend_from_slice(MftEntry::device(name, *t).as_bytes());
    }
    m
}

/// How an executable is laid out.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// `abi_target` of the ABI1 note (1 hvt, 2 spt).
    pub target: u32,
    /// Whether the MFT1 note is present.
    pub manifest: bool,
    /// Added to the file offset of the MFT1 note (0: 8-aligned).
    pub mft_skew: usize,
}

/// A Solo5 executable shaped like the project's guests: text (R X), the
/// two notes in rodata (R), data (R W), bss, one `PT_NOTE` per note.
pub fn executable(layout: Layout, devices: &[(&str, MftType)]) -> Vec<u8> {
    const BASE: u64 = 0x10_0000;
    let abi = note(
        ABI1_NOTE_TYPE,
        &[layout.target.to_le_bytes(), 2u32.to_le_bytes(), [0; 4], [0; 4]].concat(),
        ABI1_NOTE_ALIGN,
    );
    let mft = note(MFT1_NOTE_TYPE, &manifest_bytes(devices), MFT1_NOTE_ALIGN);
    let mut bytes = vec![0u8; 0x3000];
    bytes[0x1000..0x1004].copy_from_slice(&[0xf4, 0xeb, 0xfd, 0x90]); // hlt; jmp .-1
    let abi_at = 0x2000;
    bytes[abi_at..abi_at + abi.len()].copy_from_slice(&abi);
    let mft_at = (abi_at + abi.len()).next_multiple_of(8) + layout.mft_skew;
    bytes.resize(bytes.len().max(mft_at + mft.len()), 0);
    bytes[mft_at..mft_at + mft.len()].copy_from_slice(&mft);
    let data_at = bytes.len().next_multiple_of(0x1000);
    bytes.resize(data_at + 0x10, 0);
    bytes[data_at..data_at + 7].copy_from_slice(b"RUCCESS");
    let rodata_len = (data_at - 0x2000) as u64;
    // (type, flags, offset, vaddr, filesz, memsz, align)
    let mut phdrs: Vec<(u32, u32, u64, u64, u64, u64, u64)> = vec![
        (1, 5, 0x1000, BASE, 4, 4, 0x1000),
        (1, 4, 0x2000, BASE + 0x1000, rodata_len, rodata_len, 0x1000),
        (1, 6, data_at as u64, BASE + 0x1000 + rodata_len, 0x10, 0x3000, 0x1000),
        (4, 4, abi_at as u64, 0, abi.len() as u64, 0, 4),
    ];
    if layout.manifest {
        phdrs.push((4, 4, mft_at as u64, 0, mft.len() as u64, 0, 8));
    }
    let phoff = bytes.len();
    for (ptype, flags, offset, vaddr, filesz, memsz, align) in &phdrs {
        bytes.extend_from_slice(&ptype.to_le_bytes());
        bytes.extend_from_slice(&flags.to_le_bytes());
        for v in [offset, vaddr, vaddr, filesz, memsz, align] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    let h = &mut bytes[..64];
    h[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00");
    h[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    h[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    h[20..24].copy_from_slice(&1u32.to_le_bytes());
    h[24..32].copy_from_slice(&BASE.to_le_bytes());
    h[32..40].copy_from_slice(&(phoff as u64).to_le_bytes());
    h[52..54].copy_from_slice(&64u16.to_le_bytes());
    h[54..56].copy_from_slice(&56u16.to_le_bytes());
    h[56..58].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
    bytes
}

const HVT: Layout = Layout { target: 1, manifest: true, mft_skew: 0 };

fn elf() -> Vec<Seed> {
    use MftType::{BlockBasic, NetBasic};
    vec![
        ("elf", "hvt-no-devices", executable(HVT, &[])),
        ("elf", "hvt-net", executable(HVT, &[("service", NetBasic)])),
        (
            "elf",
            "spt-net-two-blocks",
            executable(
                Layout { target: 2, ..HVT },
                &[("service", NetBasic), ("storage", BlockBasic), ("b2", BlockBasic)],
            ),
        ),
        ("elf", "no-manifest", executable(Layout { manifest: false, ..HVT }, &[])),
    ]
}

fn manifest() -> Vec<Seed> {
    use MftType::{BlockBasic, NetBasic};
    let names: Vec<String> = (0..63).map(|i| format!("dev{i}")).collect();
    let full: Vec<(&str, MftType)> = names.iter().map(|n| (n.as_str(), BlockBasic)).collect();
    vec![
        ("manifest", "empty", manifest_bytes(&[])),
        ("manifest", "net-and-block", manifest_bytes(&[("service", NetBasic), ("storage", BlockBasic)])),
        ("manifest", "sixty-four-entries", manifest_bytes(&full)),
        (
            "manifest",
            "source-net-and-block.json",
            br#"{"type": "solo5.manifest", "version": 1, "devices": [{"name": "service", "type": "NET_BASIC"}, {"name": "storage", "type": "BLOCK_BASIC"}]}"#.to_vec(),
        ),
        ("manifest", "source-empty.json", br#"{ "type": "solo5.manifest", "version": 1, "devices": [ ] }"#.to_vec()),
    ]
}

fn http() -> Vec<Seed> {
    let s = |name: &'static str, text: &str| ("http_server", name, text.as_bytes().to_vec());
    vec![
        s("get", "GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
        s("get-directory-redirect", "GET /a?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
        s("head-and-close", "HEAD /a/b.txt HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
        s("http10-keep-alive", "GET /a/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /empty HTTP/1.0\r\n\r\n"),
        s(
            "pipelined",
            "GET /a/b.txt HTTP/1.1\r\nHost: a\r\n\r\nGET /big.bin HTTP/1.1\r\nHost: a\r\n\r\nGET /nope HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        s(
            "range",
            "GET /big.bin HTTP/1.1\r\nHost: a\r\nRange: bytes=100-39999\r\n\r\nGET /a/b.txt HTTP/1.1\r\nHost: a\r\nRange: bytes=-10\r\n\r\n",
        ),
        s(
            "conditional",
            "GET /a/b.txt HTTP/1.1\r\nHost: a\r\nIf-None-Match: \"x\", *\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nIf-Modified-Since: Sun, 01 Nov 2026 00:00:00 GMT\r\n\r\n",
        ),
        s(
            "post-length",
            "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        s(
            "post-chunked",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n",
        ),
        s("expect-continue", "PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc"),
        s("too-large", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999\r\n\r\n"),
        s("bad-version", "GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
        s("no-host", "GET / HTTP/1.1\r\n\r\n"),
        s("unknown-coding", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
        s("absolute-form", "GET http://a/a/b.txt HTTP/1.1\r\nHost: a\r\n\r\n"),
        s("percent", "GET /a/b%2etxt HTTP/1.1\r\nHost: a\r\n\r\nGET /%ff HTTP/1.1\r\nHost: a\r\n\r\n"),
        s("partial-head", "GET / HTTP/1.1\r\nHost: a\r\n"),
    ]
}

/// A ustar header, its checksum computed.
fn ustar(name: &str, size: usize, kind: u8) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"15000000000\0");
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// Members as GNU tar writes some of them: a long name in an `L` member,
/// a directory, a symbolic link.
fn gnu_archive() -> Vec<u8> {
    let long = format!("{}/index.html", "long".repeat(30));
    let mut out = Vec::new();
    let mut member = |h: [u8; 512], data: &[u8]| {
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(512), 0);
    };
    member(ustar("dir/", 0, b'5'), b"");
    member(ustar("././@LongLink", long.len() + 1, b'L'), format!("{long}\0").as_bytes());
    member(ustar(&long[..100], 5, b'0'), b"hello");
    member(ustar("link", 0, b'2'), b"");
    member(ustar("dir/file", 3, b'0'), b"abc");
    out.resize(out.len() + 1024, 0);
    out
}

fn tar() -> Vec<Seed> {
    let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
    let longer = format!("{}/x", "p".repeat(300));
    vec![
        ("tar", "empty", write_archive([], 512)),
        (
            "tar",
            "site",
            write_archive(
                [("index.html", &b"<h1>hi</h1>"[..], 1_700_000_000), ("css/site.css", b"body{}", 5), ("empty", b"", 0)],
                512,
            ),
        ),
        (
            "tar",
            "prefix-and-pax",
            write_archive([(long.as_str(), &b"split at a slash"[..], 7), (longer.as_str(), b"pax path", 8)], 512),
        ),
        ("tar", "gnu-long-name", gnu_archive()),
    ]
}

fn wire() -> Vec<Seed> {
    let recipe = |recipe: u8, body: &[u8]| {
        let mut input = vec![recipe];
        if recipe & 1 == 0 {
            input.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
            input.resize(33, 0);
        } else {
            input.extend_from_slice(&std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1).octets());
            input.extend_from_slice(&std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2).octets());
        }
        input.extend_from_slice(body);
        crate::wire::built(&input).expect("a recipe")
    };
    let syn = [0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x60, 0x02, 0xff, 0xff, 0, 0, 0, 0, 2, 4, 5, 0xb4];
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 10, 0, 0, 1]);
    arp.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
    vec![
        ("wire", "arp-request", arp),
        ("wire", "icmp-echo", recipe(0x00, &[8, 0, 0, 0, 0, 1, 0, 7, b'p', b'i', b'n', b'g'])),
        ("wire", "udp-padded", recipe(0x22, &[0x04, 0xd2, 0, 53, 0, 0, 0, 0, b'q'])),
        ("wire", "tcp-syn-ip-options", recipe(0x0c, &syn)),
        ("wire", "icmpv6-echo", recipe(0x01, &[128, 0, 0, 0, 0, 1, 0, 1])),
        ("wire", "udp6", recipe(0x03, &[0x04, 0xd2, 0x02, 0x22, 0, 0, 0, 0, 1, 2, 3])),
        ("wire", "tcp6", recipe(0x05, &syn)),
    ]
}

/// A gdb session's packets as the server receives them, and a few that
/// gdb would never send.
fn gdb_remote() -> Vec<Seed> {
    let packet = |data: &str| {
        let sum = data.bytes().fold(0u8, |s, c| s.wrapping_add(c));
        format!("${data}#{sum:02x}")
    };
    let session = |packets: &[&str]| packets.iter().map(|p| packet(p)).collect::<Vec<_>>().join("+").into_bytes();
    vec![
        (
            "gdb_remote",
            "attach-break-step-continue",
            session(&[
                "qSupported:multiprocess+;swbreak+;hwbreak+",
                "vMustReplyEmpty",
                "Hg0",
                "qfThreadInfo",
                "?",
                "g",
                "m100020,1",
                "Z0,1004a9,1",
                "c",
                "z0,1004a9,1",
                "s",
                "p10",
                "P10=2000100000000000",
                "M10000,4:01020304",
                "k",
            ]),
        ),
        ("gdb_remote", "out-of-range", session(&["m1ffffff,2", "mffffffffffffffff,10", "M1fffff,2:0000", "m0,fff"])),
        ("gdb_remote", "bad-checksum-then-good", b"$g#00$g#67+-\x03".to_vec()),
    ]
}

fn args() -> Vec<Seed> {
    let s = |name: &'static str, text: &str| ("args", name, text.as_bytes().to_vec());
    vec![
        s("empty", ""),
        s("solo5-options", "--solo5:quiet --solo5:debug --hello=Hola"),
        s(
            "every-type",
            "--hello='Hola mundo' --verbose --u8=255 --port 80 --u32=7 --u64=18446744073709551615 --usize=0 --i32=-5 --i64=9 --gateway=10.0.0.1 --v6=fd00::1 --ip=::1 --peer=[::1]:8080 --ipv4=192.168.1.7/16 --ipv6=fd00::2/64 --timeout=500ms --maybe=",
        ),
        s("logs", "-l tcpip:debug,*:warn --logs=error -ldebug"),
        s("quotes-and-escapes", r#"--hello="a \"b\" c" 'd e'\ f"#),
        s("help", "--port=1 --help"),
        s("errors", "--port=99999 --ipv4=10.0.0.2/33 --nope"),
    ]
}

/// A client's exchanges with the DHCP server: a lease, a renewal, a
/// decline and a release, and a flood of DISCOVERs.
fn dhcpd() -> Vec<Seed> {
    use smoltcp::wire::{DhcpMessageType as T, DhcpPacket, DhcpRepr, EthernetAddress};
    use std::net::Ipv4Addr;
    let msg = |kind: T, mac: u8, xid: u32, requested: Option<Ipv4Addr>, ciaddr: Ipv4Addr, server: bool| {
        let m = DhcpRepr {
            message_type: kind,
            transaction_id: xid,
            secs: 0,
            client_hardware_address: EthernetAddress([2, 0, 0, 0, 0, mac]),
            client_ip: ciaddr,
            your_ip: Ipv4Addr::UNSPECIFIED,
            server_ip: Ipv4Addr::UNSPECIFIED,
            router: None,
            subnet_mask: None,
            relay_agent_ip: Ipv4Addr::UNSPECIFIED,
            broadcast: false,
            requested_ip: requested,
            client_identifier: None,
            server_identifier: server.then_some(Ipv4Addr::new(10, 1, 0, 1)),
            parameter_request_list: Some(&[1, 3, 6, 51]),
            dns_servers: None,
            max_size: None,
            lease_duration: None,
            renew_duration: None,
            rebind_duration: None,
            additional_options: &[],
        };
        let mut buf = vec![0u8; m.buffer_len()];
        m.emit(&mut DhcpPacket::new_unchecked(&mut buf[..])).expect("room for the message");
        buf
    };
    let none = Ipv4Addr::UNSPECIFIED;
    let first = Ipv4Addr::new(10, 1, 0, 100);
    let lease = vec![
        (0, msg(T::Discover, 0xa, 1, None, none, false)),
        (0, msg(T::Request, 0xa, 2, Some(first), none, true)),
        (60, msg(T::Request, 0xa, 3, None, first, false)),
        (1, msg(T::Decline, 0xa, 4, Some(first), none, true)),
        (1, msg(T::Discover, 0xc, 5, Some(first), none, false)),
        (1, msg(T::Release, 0xc, 6, None, Ipv4Addr::new(10, 1, 0, 7), true)),
        (1, msg(T::Inform, 0xb, 7, None, Ipv4Addr::new(10, 1, 0, 50), false)),
    ];
    let flood: Vec<(u8, Vec<u8>)> =
        (0..40u8).map(|i| (0, msg(T::Discover, 0x40 + i, u32::from(i), None, none, false))).collect();
    vec![
        ("dhcpd", "lease-renew-decline-release", crate::dhcpd::frame(&lease)),
        ("dhcpd", "discover-flood", crate::dhcpd::frame(&flood)),
    ]
}
