//! Secrets kept out of the config file: a password or URL written `env:NAME` is read from the
//! environment variable NAME, one written `file:PATH` from that file (a relative path is relative
//! to the config file's directory; one trailing newline is dropped). A missing variable or
//! unreadable file is a config error naming the key.

use std::path::Path;

use super::{Config, ConfigError};

/// Replaces every `env:` / `file:` secret of the config by its value.
pub fn resolve(config: &mut Config, path: &Path) -> Result<(), ConfigError> {
    let base = path.parent().unwrap_or(Path::new("."));
    let invalid = |key: String, message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        key,
        message,
    };
    let mut fields: Vec<(String, &mut String)> = Vec::new();
    for (i, user) in config.users.iter_mut().enumerate() {
        if let Some(p) = user.password.as_mut() {
            fields.push((format!("users[{i}].password"), p));
        }
        if let Some(p) = user.server_password.as_mut() {
            fields.push((format!("users[{i}].server_password"), p));
        }
    }
    if let Some(p) = config.server_auth.password.as_mut() {
        fields.push(("server_auth.password".into(), p));
    }
    fields.push(("catalog.url".into(), &mut config.catalog.url));
    for (i, shard) in config.shards.iter_mut().enumerate() {
        if let Some(p) = shard.password.as_mut() {
            fields.push((format!("shards[{i}].password"), p));
        }
    }
    for (key, value) in fields {
        if let Some(resolved) = lookup(value, base).map_err(|m| invalid(key, m))? {
            *value = resolved;
        }
    }
    Ok(())
}

/// The value a secret reference stands for; `None` when `value` is the secret itself.
fn lookup(value: &str, base: &Path) -> Result<Option<String>, String> {
    if let Some(name) = value.strip_prefix("env:") {
        return match std::env::var(name) {
            Ok(v) if !v.is_empty() => Ok(Some(v)),
            Ok(_) => Err(format!("environment variable {name} is empty")),
            Err(_) => Err(format!("environment variable {name} is not set")),
        };
    }
    if let Some(file) = value.strip_prefix("file:") {
        let file = base.join(file);
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read secret file {}: {e}", file.display()))?;
        let text = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(&text);
        if text.is_empty() {
            return Err(format!("secret file {} is empty", file.display()));
        }
        return Ok(Some(text.to_string()));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[[users]]
name = "app"
password = "USER"

[proxy]

[catalog]
url = "CATALOG"

[server_auth]
user = "pgshard"
password = "SERVER"

[[shards]]
id = 0
port = 5501
database = "app"
password = "SHARD"
"#;

    fn load(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::from_toml(text, path)
    }

    #[test]
    fn env_and_file_secrets_are_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("user.secret"), "from-file\n").unwrap();
        std::fs::write(
            dir.path().join("catalog.secret"),
            "postgres://pgshard:pw@127.0.0.1:5500/catalog\r\n",
        )
        .unwrap();
        std::env::set_var("PGSHARD_TEST_SERVER_SECRET", "from-env");
        std::env::set_var("PGSHARD_TEST_SHARD_SECRET", "shard-env");
        let text = BASE
            .replace("\"USER\"", "\"file:user.secret\"")
            .replace("\"CATALOG\"", "\"file:catalog.secret\"")
            .replace("\"SERVER\"", "\"env:PGSHARD_TEST_SERVER_SECRET\"")
            .replace("\"SHARD\"", "\"env:PGSHARD_TEST_SHARD_SECRET\"");
        let c = load(&text, &dir.path().join("pgshard.toml")).unwrap();
        assert_eq!(c.users[0].password.as_deref(), Some("from-file"));
        assert_eq!(
            c.catalog.url,
            "postgres://pgshard:pw@127.0.0.1:5500/catalog"
        );
        assert_eq!(c.server_auth.password.as_deref(), Some("from-env"));
        assert_eq!(c.shards[0].password.as_deref(), Some("shard-env"));
    }

    #[test]
    fn missing_secrets_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgshard.toml");
        let plain = BASE.replace("\"CATALOG\"", "\"postgres://a@b/c\"");
        let text = plain.replace("\"SERVER\"", "\"env:PGSHARD_TEST_NOT_SET_ANYWHERE\"");
        let err = load(&text, &path).unwrap_err().to_string();
        assert!(err.contains("server_auth.password"), "{err}");
        assert!(err.contains("PGSHARD_TEST_NOT_SET_ANYWHERE"), "{err}");
        let text = plain.replace("\"USER\"", "\"file:nope.secret\"");
        let err = load(&text, &path).unwrap_err().to_string();
        assert!(err.contains("users[0].password"), "{err}");
        assert!(err.contains("nope.secret"), "{err}");
        let text = plain.replace("\"SHARD\"", "\"file:/dev/null\"");
        let err = load(&text, &path).unwrap_err().to_string();
        assert!(err.contains("shards[0].password"), "{err}");
        assert!(err.contains("empty"), "{err}");
    }
}
