//! Private network namespaces for kernel tests: never touch the host's own rules.

use std::{
    io::Write,
    process::{Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
};

use switchyard_iptables::{Backend, IptOptions};

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
            "sy-ipt-{}-{}",
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

    /// Runs `TOOL ARGS` in the namespace with `input` on stdin; returns (success, stdout+stderr).
    pub fn run(&self, tool: &str, args: &[&str], input: &str) -> (bool, String) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, tool])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tool");
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_string();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
        let out = child.wait_with_output().expect("tool output");
        writer.join().unwrap();
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    pub fn options(&self, backend: Backend) -> IptOptions {
        IptOptions {
            netns: Some(self.name.clone()),
            backend,
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

/// `iptables` tool name for a backend and family: e.g. `ip6tables-legacy-save`.
pub fn tool(backend: Backend, v6: bool, suffix: &str) -> String {
    let base = if v6 { "ip6tables" } else { "iptables" };
    let b = match backend {
        Backend::Legacy => "legacy",
        _ => "nft",
    };
    if suffix.is_empty() {
        format!("{base}-{b}")
    } else {
        format!("{base}-{b}-{suffix}")
    }
}
