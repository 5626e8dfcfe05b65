//! Running the userspace tools the probe asks (`nft`, `iptables-*-restore`, `ipset`,
//! `bpftool`, `ip`) with a time bound: a tool that hangs is killed and reported, never
//! waited on forever. Also finds tools on `PATH` and in the sbin directories an agent's
//! environment may leave out.

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::error::CommandError;

/// Directories searched after `PATH`: an agent may run with a `PATH` lacking sbin.
const SBIN_DIRS: [&str; 4] = ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin"];

/// The full path of executable `name`, when installed.
pub fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// What a finished tool printed.
#[derive(Debug, Clone)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program args…`, feeding `stdin`, killing it after `timeout`. Succeeds only on
/// exit status 0.
pub fn run(
    program: &Path,
    args: &[&str],
    stdin: Option<&str>,
    timeout: Duration,
) -> Result<Output, CommandError> {
    let display = std::iter::once(program.display().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CommandError::Spawn {
            command: display.clone(),
            source,
        })?;

    let mut out_pipe = child.stdout.take();
    let mut err_pipe = child.stderr.take();
    let out_reader = thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = out_pipe.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = err_pipe.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A tool that exits early closes its stdin; its exit status tells the story.
        let _ = pipe.write_all(input.as_bytes());
    }

    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CommandError::TimedOut {
                    command: display,
                    after: timeout,
                });
            }
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(source) => {
                let _ = child.kill();
                return Err(CommandError::Spawn {
                    command: display,
                    source,
                });
            }
        }
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    if status.success() {
        Ok(Output { stdout, stderr })
    } else {
        Err(CommandError::Failed {
            command: display,
            status: status
                .code()
                .map_or_else(|| "killed by a signal".to_string(), |c| c.to_string()),
            stderr: first_lines(&stderr, 3),
        })
    }
}

/// The first `n` non-empty lines of `text`, joined with ` | `.
pub fn first_lines(text: &str, n: usize) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(n)
        .collect::<Vec<_>>()
        .join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_feeds_stdin_and_times_out() {
        let cat = find("cat").expect("cat");
        let out = run(&cat, &[], Some("hello\n"), Duration::from_secs(5)).unwrap();
        assert_eq!(out.stdout, "hello\n");

        let sleep = find("sleep").expect("sleep");
        let started = Instant::now();
        let err = run(&sleep, &["10"], None, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, CommandError::TimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));

        let sh = find("sh").expect("sh");
        let err = run(
            &sh,
            &["-c", "echo boom >&2; exit 3"],
            None,
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        assert!(err.to_string().contains("exit status 3"), "{err}");
    }
}
