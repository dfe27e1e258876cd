//! Whether the Redis in use keeps what it acknowledged across a crash. A
//! rotated refresh token lives only in the store: if Redis loses the write,
//! the old token is already spent at the provider and the login is gone.

/// What `INFO persistence` says about writes surviving a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Durability {
    /// The append-only file is on (`appendonly yes`): every acknowledged
    /// write is in the file before the reply (and fsynced per
    /// `appendfsync`). RDB snapshots alone lose what changed since the last
    /// one, so they do not count.
    pub aof: bool,
}

impl Durability {
    /// Reads the `INFO persistence` section.
    pub fn from_info(info: &str) -> Durability {
        let aof = info
            .lines()
            .find_map(|l| l.trim().strip_prefix("aof_enabled:"))
            .map(str::trim)
            == Some("1");
        Durability { aof }
    }

    /// Whether a rotated refresh token survives a Redis crash.
    pub fn is_durable(&self) -> bool {
        self.aof
    }

    /// The loud warning for a server that may lose credentials.
    pub fn warning(&self, server: &str) -> String {
        format!(
            "{server} does not keep every write across a crash (its append-only file is off; \
             snapshots lose what changed since the last one): a rotated OAuth refresh token \
             written there can be lost, and that login with it. Turn the append-only file on: \
             `appendonly yes` and `appendfsync always` (or `everysec`) in redis.conf, or \
             `CONFIG SET appendonly yes` then `CONFIG REWRITE`"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aof_on_is_durable_and_off_is_not() {
        let on = Durability::from_info("# Persistence\r\naof_enabled:1\r\nrdb_saves:0\r\n");
        assert!(on.is_durable());
        let off = Durability::from_info("# Persistence\r\naof_enabled:0\r\n");
        assert!(!off.is_durable());
        assert!(off.warning("redis at x").contains("appendonly yes"));
    }
}
