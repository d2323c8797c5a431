//! Certificates for tests, made with openssl: a CA, server and client
//! leaves, a rogue CA with its own client, and expired leaves.

use std::path::Path;
use std::process::Command;

pub fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A self-signed CA `name` (`name.crt`, `name.key`).
pub fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
}

/// A new key `leaf.key` and its signing request `leaf.csr`.
pub fn csr(dir: &Path, leaf: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{leaf}.key"),
            "-out",
            &format!("{leaf}.csr"),
            "-subj",
            &format!("/CN={leaf}"),
        ],
    );
}

pub fn leaf(dir: &Path, ca: &str, leaf: &str, san: &str) {
    csr(dir, leaf);
    std::fs::write(
        dir.join(format!("{leaf}.ext")),
        format!("subjectAltName={san}\n"),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{leaf}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{leaf}.crt"),
            "-days",
            "2",
            "-extfile",
            &format!("{leaf}.ext"),
        ],
    );
}

/// A leaf that expired in 2020, signed by `ca` with `openssl ca`.
pub fn expired_leaf(dir: &Path, ca: &str, leaf: &str, san: &str) {
    csr(dir, leaf);
    std::fs::write(
        dir.join(format!("{leaf}.cnf")),
        format!("[ca]\ndefault_ca=d\n[d]\ndir=.\ndatabase={leaf}.index\nnew_certs_dir=.\nserial={leaf}.serial\ndefault_md=sha256\npolicy=p\n[p]\ncommonName=supplied\n[ext]\nsubjectAltName={san}\n"),
    )
    .unwrap();
    std::fs::write(dir.join(format!("{leaf}.index")), "").unwrap();
    std::fs::write(dir.join(format!("{leaf}.serial")), "1000\n").unwrap();
    openssl(
        dir,
        &[
            "ca",
            "-batch",
            "-config",
            &format!("{leaf}.cnf"),
            "-cert",
            &format!("{ca}.crt"),
            "-keyfile",
            &format!("{ca}.key"),
            "-in",
            &format!("{leaf}.csr"),
            "-out",
            &format!("{leaf}.crt"),
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200102000000Z",
            "-notext",
            "-extfile",
            &format!("{leaf}.cnf"),
            "-extensions",
            "ext",
        ],
    );
}

pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        ca(d, "ca");
        leaf(d, "ca", "server", "DNS:receiver.test,IP:127.0.0.1");
        leaf(d, "ca", "client", "DNS:forwarder.test");
        ca(d, "rogue");
        leaf(d, "rogue", "rogueclient", "DNS:forwarder.test");
        expired_leaf(d, "ca", "expiredserver", "DNS:receiver.test,IP:127.0.0.1");
        expired_leaf(d, "ca", "expiredclient", "DNS:forwarder.test");
        Pki { dir }
    }
    pub fn p(&self, f: &str) -> String {
        self.dir.path().join(f).display().to_string()
    }
}
