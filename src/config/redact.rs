//! Secrets never reach a log line, a panic message or `SHOW CONFIG`: the config types holding a
//! password or a URL with one print it masked.

use std::fmt;

use super::{CatalogConfig, ServerAuthConfig, ShardConfig, UserConfig};

/// What a masked secret shows.
pub const MASK: &str = "********";

/// Hides the password of a `postgres://user:password@host/db` URL.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:{MASK}{}", &rest[at..]),
        None => url.to_string(),
    }
}

/// `Some("********")` for a set password, so Debug output still says whether there is one.
fn masked(password: &Option<String>) -> Option<&'static str> {
    password.as_ref().map(|_| MASK)
}

impl fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("password", &masked(&self.password))
            .field("auth", &self.auth)
            .field("admin", &self.admin)
            .field("server_user", &self.server_user)
            .field("server_password", &masked(&self.server_password))
            .field("allow_scatter", &self.allow_scatter)
            .finish()
    }
}

impl fmt::Debug for CatalogConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatalogConfig")
            .field("url", &mask_url(&self.url))
            .field("poll_interval_ms", &self.poll_interval_ms)
            .finish()
    }
}

impl fmt::Debug for ServerAuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerAuthConfig")
            .field("user", &self.user)
            .field("password", &masked(&self.password))
            .field("allow_superuser_clients", &self.allow_superuser_clients)
            .finish()
    }
}

impl fmt::Debug for ShardConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardConfig")
            .field("id", &self.id)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &masked(&self.password))
            .field("replicas", &self.replicas)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(
            mask_url("postgres://pgshard:secret@127.0.0.1:5500/catalog"),
            "postgres://pgshard:********@127.0.0.1:5500/catalog"
        );
        assert_eq!(
            mask_url("postgres://pgshard@host/db"),
            "postgres://pgshard@host/db"
        );
        assert_eq!(mask_url("not a url"), "not a url");
    }

    #[test]
    fn debug_output_of_the_whole_config_holds_no_secret() {
        let text = include_str!("../../config/pgshard.toml")
            .replace("password = \"app\"", "password = \"s3cr3t-user\"");
        let mut c = Config::from_toml(&text, Path::new("config/pgshard.toml")).unwrap();
        c.server_auth.password = Some("s3cr3t-server".into());
        c.users[0].server_password = Some("s3cr3t-role".into());
        c.shards[0].password = Some("s3cr3t-shard".into());
        c.catalog.url = "postgres://pgshard:s3cr3t-url@127.0.0.1:5500/catalog".into();
        let printed = format!("{c:?} {c:#?}");
        assert!(!printed.contains("s3cr3t"), "{printed}");
        assert!(printed.contains(MASK), "{printed}");
        assert!(printed.contains("pgshard:********@"), "{printed}");
    }
}
