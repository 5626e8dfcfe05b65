//! Private network namespaces for kernel tests: never touch the host's own rules.

use std::{
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Whether kernel tests can run. Without root: panics when `CI=true`, else prints a loud
/// notice and returns false (the caller returns).
pub fn have_root(test: &str) -> bool {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if uid == "0" {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: kernel tests need root (CI=true, so not skipping)");
    }
    eprintln!("\n!!!!!!!! SKIPPED: {test} needs root !!!!!!!!\n");
    false
}

/// A network namespace deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        let name = format!(
            "sy-nft-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip");
        assert!(status.success(), "ip netns add {name}");
        Netns { name }
    }

    /// Runs `nft ARGS` in the namespace with `input` on stdin; returns (success, stdout+stderr).
    pub fn nft(&self, args: &[&str], input: &str) -> (bool, String) {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft"])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run nft");
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_string();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
        let out = child.wait_with_output().expect("nft output");
        writer.join().unwrap();
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    pub fn options(&self) -> switchyard_nftables::NftOptions {
        switchyard_nftables::NftOptions {
            netns: Some(self.name.clone()),
            ..Default::default()
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}
