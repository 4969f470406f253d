//! The unix devices on real files, directories and loopback sockets.

use std::time::Duration;

use mirage_devices::block::{self, Block};
use mirage_devices::flow::Flow;
use mirage_devices::kv::{Error as KvError, Key, Kind, KvRo, KvRw};
use mirage_devices::stack::{Tcp, TcpListener, Udp, UdpSocket};
use mirage_runtime::time;
use mirage_unix::{DirKv, FileBlock, SocketStack};

fn scratch(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("mirage-unix-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn tcp_echo_with_many_clients_over_loopback() {
    let code = mirage_unix::run(async {
        let stack = SocketStack;
        let listener = stack.listen(0, 128).await.unwrap();
        let port = listener.local_addr().port();
        let server = mirage_runtime::spawn(async move {
            for _ in 0..50 {
                let (mut flow, _) = listener.accept().await.unwrap();
                mirage_runtime::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = flow.read(&mut buf).await.unwrap();
                        if n == 0 {
                            break;
                        }
                        flow.write_all(&buf[..n]).await.unwrap();
                    }
                    flow.shutdown().await.unwrap();
                });
            }
        });
        let clients = (0..50u32).map(|i| async move {
            let mut c = SocketStack.connect(([127, 0, 0, 1], port).into()).await.unwrap();
            let msg: Vec<u8> = (0..10_000u32).map(|j| (i + j) as u8).collect();
            c.write_all(&msg).await.unwrap();
            c.shutdown().await.unwrap();
            let mut back = Vec::new();
            let mut buf = [0u8; 1500];
            loop {
                let n = c.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                back.extend_from_slice(&buf[..n]);
            }
            assert_eq!(back, msg);
        });
        mirage_runtime::join_all(clients).await;
        server.await;
        0
    });
    assert_eq!(code, 0);
}

#[test]
fn udp_round_trip_and_refused_connection() {
    mirage_unix::run(async {
        let a = SocketStack.bind(0).await.unwrap();
        let b = SocketStack.bind(0).await.unwrap();
        let to = std::net::SocketAddr::from(([127, 0, 0, 1], b.local_addr().port()));
        a.send_to(b"ping", to).await.unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = b.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(from.port(), a.local_addr().port());
        // Nothing listens on this port (it was just released).
        let l = SocketStack.listen(0, 1).await.unwrap();
        let port = l.local_addr().port();
        drop(l);
        let e = SocketStack.connect(([127, 0, 0, 1], port).into()).await.unwrap_err();
        assert_eq!(e, mirage_devices::stack::Error::Refused);
    });
}

#[test]
fn sleeps_are_on_time() {
    mirage_unix::run(async {
        for ms in [1u64, 5, 20] {
            let t0 = time::now();
            time::sleep(Duration::from_millis(ms)).await;
            let late = (time::now() - t0).as_micros() as i64 - ms as i64 * 1000;
            assert!(late >= 0, "woke {late} us early");
            assert!(late < 20_000, "woke {late} us late");
        }
    });
}

#[test]
fn file_block_device() {
    let dir = scratch("blk");
    let path = dir.join("disk.img");
    std::fs::write(&path, vec![0u8; 64 * 1024]).unwrap();
    mirage_unix::run(async {
        let b = FileBlock::open(&path, 512, false).unwrap();
        assert_eq!(b.info().sectors, 128);
        let data: Vec<u8> = (0..2048).map(|i| i as u8).collect();
        b.write(10, &data).await.unwrap();
        let mut back = vec![0u8; 2048];
        b.read(10, &mut back).await.unwrap();
        assert_eq!(back, data);
        assert_eq!(b.read(127, &mut back).await, Err(block::Error::OutOfRange));
        assert_eq!(b.read(0, &mut back[..100]).await, Err(block::Error::Misaligned));
        b.flush().await.unwrap();
        let ro = FileBlock::open(&path, 4096, true).unwrap();
        assert_eq!(ro.write(0, &data[..]).await, Err(block::Error::ReadOnly));
    });
    std::fs::write(dir.join("odd.img"), vec![0u8; 1000]).unwrap();
    assert!(FileBlock::open(&dir.join("odd.img"), 512, false).is_err());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn directory_key_value_store() {
    let dir = scratch("kv");
    std::fs::create_dir_all(dir.join("root/sub")).unwrap();
    std::fs::write(dir.join("root/a.txt"), b"hello").unwrap();
    std::fs::write(dir.join("root/sub/b"), b"world!").unwrap();
    std::fs::write(dir.join("secret"), b"outside").unwrap();
    std::os::unix::fs::symlink(dir.join("secret"), dir.join("root/link")).unwrap();
    let k = |s: &str| Key::parse(s).unwrap();
    mirage_unix::run(async {
        let kv = DirKv::open(&dir.join("root")).unwrap();
        assert_eq!(kv.exists(&k("a.txt")).await, Ok(Some(Kind::Value)));
        assert_eq!(kv.exists(&k("sub")).await, Ok(Some(Kind::Dictionary)));
        assert_eq!(kv.exists(&k("nope")).await, Ok(None));
        assert_eq!(kv.get(&k("/sub/b")).await.unwrap(), b"world!");
        assert_eq!(kv.get(&k("sub")).await, Err(KvError::ValueExpected));
        assert_eq!(kv.get(&k("link")).await, Err(KvError::NotFound), "a link out of the root is not followed");
        let mut buf = [0u8; 3];
        assert_eq!(kv.get_partial(&k("a.txt"), 2, &mut buf).await, Ok(3));
        assert_eq!(&buf, b"llo");
        assert_eq!(kv.get_partial(&k("a.txt"), 10, &mut buf).await, Ok(0));
        assert_eq!(kv.size(&k("sub/b")).await, Ok(6));
        let names: Vec<String> = kv.list(&Key::root()).await.unwrap().iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(names, ["/a.txt", "/link", "/sub"]);
        assert_eq!(
            kv.digest(&k("a.txt")).await.unwrap().to_string(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert!(kv.last_modified(&k("a.txt")).await.unwrap().as_secs() > 1_600_000_000);
        kv.set(&k("new/deep/v"), b"1234").await.unwrap();
        assert_eq!(kv.get(&k("new/deep/v")).await.unwrap(), b"1234");
        kv.set_partial(&k("new/deep/v"), 2, b"xyz").await.unwrap();
        assert_eq!(kv.get(&k("new/deep/v")).await.unwrap(), b"12xyz");
        kv.rename(&k("new/deep/v"), &k("moved")).await.unwrap();
        assert_eq!(kv.exists(&k("new/deep/v")).await, Ok(None));
        assert_eq!(kv.get(&k("moved")).await.unwrap(), b"12xyz");
        kv.allocate(&k("zeros"), 10).await.unwrap();
        assert_eq!(kv.get(&k("zeros")).await.unwrap(), [0u8; 10]);
        assert_eq!(kv.allocate(&k("zeros"), 10).await, Err(KvError::AlreadyPresent));
        kv.remove(&k("new")).await.unwrap();
        assert_eq!(kv.exists(&k("new")).await, Ok(None));
        assert_eq!(kv.remove(&Key::root()).await, Err(KvError::InvalidKey));
        // Links planted in the root lead nothing out of it: a dictionary
        // linked outside is neither written in nor made deeper, and a link
        // at the temporary file's name is not written through.
        std::fs::create_dir_all(dir.join("outside")).unwrap();
        std::os::unix::fs::symlink(dir.join("outside"), dir.join("root/out")).unwrap();
        assert_eq!(kv.set(&k("out/x"), b"no").await, Err(KvError::InvalidKey));
        assert_eq!(kv.set(&k("out/deeper/x"), b"no").await, Err(KvError::InvalidKey));
        assert!(!dir.join("outside/deeper").exists() && !dir.join("outside/x").exists());
        std::os::unix::fs::symlink(dir.join("secret"), dir.join("root/.t.tmp")).unwrap();
        kv.set(&k("t"), b"value").await.unwrap();
        assert_eq!(std::fs::read(dir.join("secret")).unwrap(), b"outside");
        assert_eq!(kv.get(&k("t")).await.unwrap(), b"value");
    });
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn random_bytes_differ() {
    use mirage_devices::random::Random;
    let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
    mirage_unix::Random.fill(&mut a);
    mirage_unix::Random.fill(&mut b);
    assert_ne!(a, b);
}
