//! File locks with a deadline, and the file-writing helpers that keep secrets
//! at mode 0600 and writes atomic.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::StoreError;

pub(crate) fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Opens (creating at 0600) a lock file.
pub(crate) fn open_lock_file(path: &Path) -> Result<File, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io_err("open lock file", path))?;
    ensure_mode(&file, path)?;
    Ok(file)
}

/// Takes an exclusive lock on `path`, waiting up to `wait`. The lock is an
/// OS-level advisory lock on the open file: it is released when the returned
/// file is dropped, and by the kernel if the process dies, so a crash never
/// leaves a stale lock behind.
pub(crate) fn lock_exclusive(path: &Path, wait: Duration) -> Result<File, StoreError> {
    let file = open_lock_file(path)?;
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err("lock", path)(e)),
        }
        let waited = start.elapsed();
        if waited >= wait {
            return Err(StoreError::LockTimeout {
                path: path.to_path_buf(),
                waited,
            });
        }
        std::thread::sleep(pause.min(wait - waited));
        pause = (pause * 2).min(Duration::from_millis(25));
    }
}

/// The lease in `path` (its end, as decimal ms since the epoch): taken
/// until `until` when it has ended by `now` (or `force`), under a
/// non-blocking lock of the file itself, so two processes never both get
/// it. A busy or unreadable file is "not granted" / "ended" respectively.
pub(crate) fn try_lease(
    path: &Path,
    now: marathon_core::UnixMillis,
    until: marathon_core::UnixMillis,
    force: bool,
) -> Result<bool, StoreError> {
    use std::io::{Read, Seek};
    let mut file = open_lock_file(path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(false),
        Err(std::fs::TryLockError::Error(e)) => return Err(io_err("lock", path)(e)),
    }
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let held_until = text.trim().parse::<u64>().unwrap_or(0);
    if !force && held_until > now.0 {
        return Ok(false);
    }
    file.set_len(0).map_err(io_err("write", path))?;
    file.rewind().map_err(io_err("write", path))?;
    file.write_all(until.0.to_string().as_bytes())
        .map_err(io_err("write", path))?;
    Ok(true)
}

/// Makes sure a file we created is 0600 whatever the umask said.
fn ensure_mode(file: &File, path: &Path) -> Result<(), StoreError> {
    let meta = file.metadata().map_err(io_err("inspect", path))?;
    if meta.permissions().mode() & 0o777 != 0o600 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io_err("set permissions on", path))?;
    }
    Ok(())
}

/// The prefix of temporary files written next to `target`.
pub(crate) fn temp_prefix(target: &Path) -> String {
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("file");
    format!(".{name}.tmp-")
}

/// Replaces `target` atomically: a temporary file in the same directory,
/// written (0600) and, when `durable`, fsynced, then renamed over the target,
/// then the directory fsynced so the rename itself survives a power loss.
/// Readers see either the old or the new content, never a mix.
pub(crate) fn write_atomic(target: &Path, bytes: &[u8], durable: bool) -> Result<(), StoreError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = target.parent().unwrap_or(Path::new("."));
    let tmp: PathBuf = dir.join(format!(
        "{}{}-{}",
        temp_prefix(target),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        ensure_mode(&file, &tmp)?;
        file.write_all(bytes).map_err(io_err("write", &tmp))?;
        if durable {
            file.sync_all().map_err(io_err("sync", &tmp))?;
        }
        drop(file);
        std::fs::rename(&tmp, target).map_err(io_err("replace", target))?;
        if durable {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err("sync directory", dir))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
