//! Files under `/proc` as a network namespace sees them: `/proc/sys/net` and
//! `/proc/net` show the namespace of the thread that opens them, so for a named
//! namespace a short-lived thread enters it first (`setns` changes only the calling
//! thread).

use std::{fs, io, path::PathBuf};

use nix::sched::{setns, CloneFlags};
use switchyard_model::EngineError;

/// Runs `f` in `netns` (a name under `/run/netns`, an absolute path to a namespace
/// file, or `None` for the caller's own); `what` names the work in errors.
pub fn in_netns<T: Send>(
    netns: Option<&str>,
    what: &str,
    f: impl FnOnce() -> Result<T, EngineError> + Send,
) -> Result<T, EngineError> {
    let Some(name) = netns else {
        return f();
    };
    let path = if name.starts_with('/') {
        PathBuf::from(name)
    } else {
        PathBuf::from("/run/netns").join(name)
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = fs::File::open(&path).map_err(|source| EngineError::Kernel {
                operation: format!("opening {}", path.display()),
                source,
            })?;
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| EngineError::Kernel {
                operation: format!("entering {}", path.display()),
                source: io::Error::from(e),
            })?;
            f()
        })
        .join()
        .unwrap_or_else(|_| {
            Err(EngineError::Kernel {
                operation: what.to_string(),
                source: io::Error::other("the namespace thread panicked"),
            })
        })
    })
}
