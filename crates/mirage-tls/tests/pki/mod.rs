//! Test certificates, made at test time with the openssl command: a CA and
//! leaves of each key type, valid from now for 30 days. Nothing here is a
//! committed key.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A directory of freshly made keys and certificates.
pub struct Pki {
    pub dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("the openssl command runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `-newkey` arguments for a key type: "ec" (P-256), "ed25519", "rsa" (2048).
fn newkey(kind: &str) -> Vec<&'static str> {
    match kind {
        "ec" => vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        "ed25519" => vec!["-newkey", "ed25519"],
        "rsa" => vec!["-newkey", "rsa:2048"],
        _ => panic!("unknown key type {kind}"),
    }
}

impl Pki {
    /// A new CA named `ca` in a fresh directory.
    pub fn new(tag: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("mirage-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki { dir };
        pki.ca("ca");
        pki
    }

    /// A self-signed CA `name`.pem / `name`.key.
    pub fn ca(&self, name: &str) {
        let (key, pem, subj) = (format!("{name}.key"), format!("{name}.pem"), format!("/CN=mirage-tls test CA {name}"));
        let mut args = vec!["req", "-x509"];
        args.extend(newkey("ec"));
        args.extend([
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "30",
            "-subj",
            &subj,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&self.dir, &args);
    }

    /// A leaf `file`.pem / `file`.key of key type `kind` for DNS `names`,
    /// signed by the CA `ca`, valid for `days` from now.
    pub fn leaf_by(&self, ca: &str, file: &str, kind: &str, names: &[&str], days: u32) {
        let (key, csr, pem) = (format!("{file}.key"), format!("{file}.csr"), format!("{file}.pem"));
        let mut args = vec!["req", "-new"];
        args.extend(newkey(kind));
        let subj = format!("/CN={}", names[0]);
        args.extend(["-nodes", "-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(&self.dir, &args);
        let ext = format!(
            "subjectAltName={}\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n",
            names.iter().map(|n| format!("DNS:{n}")).collect::<Vec<_>>().join(",")
        );
        let ext_file = format!("{file}.ext");
        std::fs::write(self.dir.join(&ext_file), ext).unwrap();
        let (ca_pem, ca_key, days) = (format!("{ca}.pem"), format!("{ca}.key"), days.to_string());
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_pem,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                &days,
                "-out",
                &pem,
                "-extfile",
                &ext_file,
            ],
        );
    }

    /// A leaf signed by the CA `ca`, valid 30 days.
    pub fn leaf(&self, file: &str, kind: &str, names: &[&str]) {
        self.leaf_by("ca", file, kind, names, 30);
    }

    pub fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(file)).unwrap()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
