//! What wakes the manifests scan: inotify on the directory (the `notify` crate), or a
//! poll timer where inotify cannot serve.
//!
//! Why inotify: polling every 200 ms put 100 ms on average (140 ms measured, at every
//! size from 1k to 50k services) between a file write and the rules changing, while the
//! engine's own change takes 0.5–18 ms. With inotify the scan starts within a
//! millisecond of the write.
//!
//! - **What wakes it.** A file deleted, renamed into or out of the directory, written
//!   and closed (`IN_CLOSE_WRITE`, neither its creation nor every `write()`: the scan
//!   would otherwise race the writer and read half a file), a symlink created; also the
//!   directory itself going away, and a queue overflow. Opens, plain writes and metadata changes do not (the scan's own
//!   reads open every file, and its first read of a new file changes its access time). Events that arrive together are
//!   handled by one scan. Kubernetes ConfigMap volumes (files behind a `..data` symlink
//!   swapped on update) wake it too: the swap renames inside the directory.
//! - **Still rescanned** every [`RESCAN_INTERVAL`] with inotify, as a safety net (a
//!   writer that never closes its file; anything inotify did not report).
//! - **Polling** every scan interval (200 ms in `switchyard run`) instead: while the
//!   directory does not exist (a watch needs it; it is set up once it appears, and again
//!   when the directory is replaced), on file systems whose changes do not all pass
//!   through this kernel (NFS, SMB/CIFS, FUSE, 9p, Ceph: inotify would miss the remote
//!   ones), and when inotify is unavailable (`fs.inotify.max_user_instances` or
//!   `max_user_watches` exhausted, a kernel without it), said once in the log.

use std::{
    path::{Path, PathBuf},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    time::Duration,
};

use notify::{
    event::{AccessKind, AccessMode, ModifyKind},
    Event, EventKind, INotifyWatcher, RecursiveMode, Watcher,
};

/// How often the directory is rescanned even though inotify watches it.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(5);

/// How the scan thread waits for the next scan.
pub struct DirWatch {
    dir: PathBuf,
    poll_interval: Duration,
    watch: Option<Active>,
    /// Polling for good, and why (already logged).
    polling_only: Option<String>,
}

/// An inotify watch on the directory as it was when the watch started.
struct Active {
    _watcher: INotifyWatcher,
    events: Receiver<notify::Result<Event>>,
    /// The directory's inode: another one means it was replaced.
    inode: u64,
}

/// Why the last wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wakeup {
    /// inotify reported a change.
    Changed,
    /// The timer ran out (poll interval, or the rescan safety net).
    Timer,
}

impl DirWatch {
    /// Waits on `dir` with inotify when it can, else every `poll_interval`.
    pub fn new(dir: impl Into<PathBuf>, poll_interval: Duration) -> Self {
        DirWatch {
            dir: dir.into(),
            poll_interval,
            watch: None,
            polling_only: None,
        }
    }

    /// Never uses inotify (tests of the fallback).
    pub fn polling(mut self, why: impl Into<String>) -> Self {
        self.polling_only = Some(why.into());
        self
    }

    /// The longest one wait lasts: the poll interval, or [`RESCAN_INTERVAL`].
    pub fn longest_wait(&self) -> Duration {
        self.poll_interval.max(RESCAN_INTERVAL)
    }

    /// Whether inotify watches the directory now.
    pub fn watching(&self) -> bool {
        self.watch.is_some()
    }

    /// Blocks until the next scan is due.
    pub fn wait(&mut self) -> Wakeup {
        self.refresh();
        let Some(active) = &self.watch else {
            std::thread::sleep(self.poll_interval);
            return Wakeup::Timer;
        };
        let deadline = std::time::Instant::now() + RESCAN_INTERVAL;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match active.events.recv_timeout(left) {
                Ok(event) if wakes(&event) => {
                    tracing::debug!(?event, "manifests directory changed: scanning");
                    break;
                }
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => return Wakeup::Timer,
                Err(RecvTimeoutError::Disconnected) => {
                    tracing::warn!(dir = %self.dir.display(), "inotify watch ended; polling until it is set up again");
                    self.watch = None;
                    return Wakeup::Timer;
                }
            }
        }
        // Whatever else is queued is seen by the same scan.
        while active.events.try_recv().is_ok() {}
        Wakeup::Changed
    }

    /// Drops a watch whose directory is gone or replaced, and starts one when there is
    /// none and the directory exists.
    fn refresh(&mut self) {
        if self.polling_only.is_some() {
            return;
        }
        let inode = dir_inode(&self.dir);
        if let Some(active) = &self.watch {
            if inode == Some(active.inode) {
                return;
            }
            tracing::info!(dir = %self.dir.display(), "manifests directory replaced or gone: watching it again once it is there");
            self.watch = None;
        }
        let Some(inode) = inode else {
            return; // polled until it appears
        };
        if let Some(why) = remote_fs(&self.dir) {
            tracing::info!(dir = %self.dir.display(), fs = why, "manifests directory on a network or user-space file system: polling it (inotify would miss remote changes)");
            self.polling_only = Some(why.to_string());
            return;
        }
        match watch(&self.dir) {
            Ok((watcher, events)) => {
                tracing::debug!(dir = %self.dir.display(), "following the manifests directory with inotify");
                self.watch = Some(Active {
                    _watcher: watcher,
                    events,
                    inode,
                });
            }
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, interval = ?self.poll_interval, "inotify unavailable: polling the manifests directory instead");
                self.polling_only = Some(e.to_string());
            }
        }
    }
}

type Watch = (INotifyWatcher, Receiver<notify::Result<Event>>);

fn watch(dir: &Path) -> notify::Result<Watch> {
    let (tx, rx) = mpsc::channel();
    let mut watcher = INotifyWatcher::new(tx, notify::Config::default())?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok((watcher, rx))
}

/// Whether `event` calls for a scan (see the module doc).
fn wakes(event: &notify::Result<Event>) -> bool {
    let Ok(event) = event else {
        return true; // an error (e.g. queue overflow): rescan
    };
    if event.need_rescan() {
        return true;
    }
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        // Metadata: the scan's own first read of a new file updates its access time
        // (relatime); a content change comes with its own close-after-write.
        EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Metadata(_)) => false,
        // A new regular file is being written: its close-after-write wakes the scan.
        // Anything else created (a symlink, a hard link) is complete already.
        EventKind::Create(_) => !event
            .paths
            .iter()
            .all(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_file())),
        _ => true,
    }
}

fn dir_inode(dir: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| m.ino())
}

/// The name of `dir`'s file system when inotify cannot see all its changes.
fn remote_fs(dir: &Path) -> Option<&'static str> {
    use nix::sys::statfs::{statfs, FsType};
    // From linux/magic.h.
    const KNOWN: [(i64, &str); 7] = [
        (0x6969, "nfs"),
        (0xFF53_4D42, "cifs"),
        (0xFE53_4D42, "smb2"),
        (0x517B, "smb"),
        (0x6573_5546, "fuse"),
        (0x0102_1997, "9p"),
        (0x00C3_6400, "ceph"),
    ];
    let fs: FsType = statfs(dir).ok()?.filesystem_type();
    // `f_type` is an i64 here and an i32 on some other targets.
    #[allow(clippy::useless_conversion)]
    KNOWN
        .iter()
        .find(|(magic, _)| i64::from(fs.0) == *magic)
        .map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sy-dirwatch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// Runs `act` on another thread shortly after the wait starts; returns what the
    /// wait said and how long it took.
    fn wait_during(w: &mut DirWatch, act: impl FnOnce() + Send + 'static) -> (Wakeup, Duration) {
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            act();
        });
        let start = Instant::now();
        let woke = w.wait();
        t.join().unwrap();
        (woke, start.elapsed())
    }

    #[test]
    fn writes_renames_and_removals_wake_it_at_once() {
        let dir = tmpdir("wake");
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = DirWatch::new(&dir, Duration::from_secs(60));
        let d = dir.clone();
        let (woke, took) = wait_during(&mut w, move || {
            std::fs::write(d.join("a.yaml"), "x: 1\n").unwrap()
        });
        assert!(w.watching());
        assert_eq!(woke, Wakeup::Changed);
        assert!(took < Duration::from_secs(2), "{took:?}");
        let d = dir.clone();
        let (woke, _) = wait_during(&mut w, move || {
            std::fs::write(d.join(".b.tmp"), "x: 2\n").unwrap();
            std::fs::rename(d.join(".b.tmp"), d.join("b.yaml")).unwrap();
        });
        assert_eq!(woke, Wakeup::Changed);
        let d = dir.clone();
        let (woke, _) = wait_during(&mut w, move || {
            std::fs::remove_file(d.join("a.yaml")).unwrap()
        });
        assert_eq!(woke, Wakeup::Changed);
        // Reading the files (as a scan does) is no change. Late events of the steps
        // above (a rename's paired event) are drained first.
        std::thread::sleep(Duration::from_millis(100));
        let events = &w.watch.as_ref().unwrap().events;
        while events.try_recv().is_ok() {}
        let d = dir.clone();
        let reader = std::thread::spawn(move || {
            for _ in 0..5 {
                let _ = std::fs::read_to_string(d.join("b.yaml"));
                let _ = std::fs::read_dir(&d).map(|r| r.count());
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        reader.join().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let waking: Vec<_> = events.try_iter().filter(wakes).collect();
        let woke_by_reads = !waking.is_empty();
        assert!(!woke_by_reads, "reads must not wake the scan: {waking:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn polls_until_the_directory_exists_then_watches_it_and_its_replacement() {
        let dir = tmpdir("late");
        let mut w = DirWatch::new(&dir, Duration::from_millis(20));
        assert_eq!(w.wait(), Wakeup::Timer);
        assert!(!w.watching(), "no directory, no watch");
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.clone();
        let (woke, _) = wait_during(&mut w, move || {
            std::fs::write(d.join("a.yaml"), "").unwrap()
        });
        assert!(w.watching());
        assert_eq!(woke, Wakeup::Changed);
        // Replaced: the old watch is dropped and a new one follows the new directory.
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.clone();
        let (woke, _) = wait_during(&mut w, move || {
            std::fs::write(d.join("c.yaml"), "").unwrap()
        });
        assert_eq!(woke, Wakeup::Changed);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn polling_fallback_waits_the_interval() {
        let dir = tmpdir("poll");
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = DirWatch::new(&dir, Duration::from_millis(30)).polling("test");
        let start = Instant::now();
        assert_eq!(w.wait(), Wakeup::Timer);
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert!(!w.watching());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
