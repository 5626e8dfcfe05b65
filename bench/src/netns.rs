//! A throwaway network namespace for one measurement, deleted on drop.

use anyhow::{bail, Result};

pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Result<Netns> {
        let name = format!("sy-bench-{}-{tag}", std::process::id());
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .output();
        let out = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .output()?;
        if !out.status.success() {
            bail!(
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = std::process::Command::new("ip")
            .args(["netns", "exec", &name, "ip", "link", "set", "lo", "up"])
            .output();
        Ok(Netns { name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
