//! Where a running `marathon serve` listens: `serve` records its address and
//! pid in the data directory (`serve.json`, 0600), removes the record when it
//! stops cleanly, and `status`, `connect` and `run` read it, so they find a
//! proxy on any port (`serve --listen 127.0.0.1:0` included) without parsing
//! the config. A record whose process is gone is ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::StoreError;
use crate::lock::write_atomic;

/// The record's file in the data directory.
pub fn record_path(data_dir: &Path) -> PathBuf {
    data_dir.join("serve.json")
}

/// A proxy that said it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    /// The address it accepts connections on (loopback when it listens on all).
    pub addr: SocketAddr,
    /// Its process.
    pub pid: u32,
}

impl Running {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The running proxy recorded in `data_dir`, unless there is none, the record
/// is unreadable, or its process has ended.
pub fn find(data_dir: &Path) -> Option<Running> {
    let text = std::fs::read_to_string(record_path(data_dir)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let running = Running {
        addr: v["addr"].as_str()?.parse().ok()?,
        pid: u32::try_from(v["pid"].as_u64()?).ok()?,
    };
    process_alive(running.pid).then_some(running)
}

/// Whether `pid` is a live process. Where `/proc` says nothing (not Linux),
/// assume it is: the caller's connection attempt will tell.
fn process_alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return true;
    }
    // A killed process its parent has not reaped yet is a zombie: dead.
    match std::fs::read_to_string(proc.join(pid.to_string()).join("stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| !matches!(state, "Z" | "X")),
        Err(_) => false,
    }
}

/// This process's record, removed when dropped (a clean exit), unless another
/// `serve` has replaced it meanwhile.
pub struct Record {
    path: PathBuf,
    pid: u32,
}

impl Record {
    /// Writes the record for this process listening on `addr`.
    pub fn write(data_dir: &Path, addr: SocketAddr) -> Result<Record, StoreError> {
        let mut addr = addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let pid = std::process::id();
        // With a shared store (Redis) nothing else creates the directory.
        {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(data_dir)
                .map_err(crate::lock::io_err("create directory", data_dir))?;
        }
        let path = record_path(data_dir);
        let body = json!({
            "pid": pid,
            "addr": addr.to_string(),
            "url": format!("http://{addr}"),
            "version": env!("CARGO_PKG_VERSION"),
        });
        write_atomic(&path, format!("{body:#}\n").as_bytes(), false)?;
        Ok(Record { path, pid })
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v["pid"].as_u64() == Some(u64::from(self.pid)));
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_found_while_its_process_lives_and_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let record = Record::write(dir.path(), "0.0.0.0:4123".parse().unwrap()).unwrap();
        let found = find(dir.path()).expect("this process is alive");
        assert_eq!(found.addr, "127.0.0.1:4123".parse().unwrap());
        assert_eq!(found.url(), "http://127.0.0.1:4123");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(record_path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        drop(record);
        assert!(!record_path(dir.path()).exists());
        assert_eq!(find(dir.path()), None);
    }

    #[test]
    fn a_record_of_a_dead_process_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        // A child that has exited and been reaped: its pid names no process.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        std::fs::write(
            record_path(dir.path()),
            format!("{{\"pid\":{pid},\"addr\":\"127.0.0.1:4124\"}}"),
        )
        .unwrap();
        if Path::new("/proc/self").exists() {
            assert_eq!(find(dir.path()), None);
        }
        // Someone else's record is left alone by ours.
        let other = Record {
            path: record_path(dir.path()),
            pid: std::process::id(),
        };
        drop(other);
        assert!(record_path(dir.path()).exists());
    }
}
