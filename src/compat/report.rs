//! `pgshard compat report`: reads `SHOW COMPAT` from a running proxy's admin console and prints
//! it as aligned text.

use crate::config::Config;

/// The proxy's `SHOW COMPAT` as text: a header line, then one line per statement.
/// `user`: an admin user (default: the config's first `admin = true` user).
pub async fn fetch(
    config: &Config,
    user: Option<&str>,
    password: Option<&str>,
) -> Result<String, tokio_postgres::Error> {
    let user = user
        .map(str::to_string)
        .or_else(|| {
            config
                .users
                .iter()
                .find(|u| u.admin)
                .map(|u| u.name.clone())
        })
        .unwrap_or_else(|| "admin".into());
    let port = config
        .proxy
        .listen
        .parse::<std::net::SocketAddr>()
        .map(|a| a.port())
        .unwrap_or(6432);
    let mut pg = tokio_postgres::Config::new();
    pg.host("127.0.0.1")
        .port(port)
        .user(&user)
        .dbname(crate::ADMIN_DATABASE);
    if let Some(p) = password {
        pg.password(p);
    }
    let (client, connection) = pg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let messages = client.simple_query("SHOW COMPAT").await?;
    let mut lines = Vec::new();
    for m in messages {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
            if lines.is_empty() {
                lines.push(
                    row.columns()
                        .iter()
                        .map(|c| c.name().to_string())
                        .collect::<Vec<_>>(),
                );
            }
            lines.push(
                (0..row.len())
                    .map(|i| one_line(row.get(i).unwrap_or("")))
                    .collect(),
            );
        }
    }
    Ok(render(&lines))
}

/// A cell on one line: a statement written over several lines (migrations' DDL) keeps one
/// report line, its line breaks and tabs as single spaces.
fn one_line(cell: &str) -> String {
    cell.split(['\n', '\r', '\t'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Columns separated by ` | `, each as wide as its widest cell (the last one unpadded).
fn render(lines: &[Vec<String>]) -> String {
    let columns = lines.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            lines
                .iter()
                .map(|l| l.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in lines {
        let cells: Vec<String> = line
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == columns {
                    c.clone()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(&cells.join(" | "));
        out.push('\n');
    }
    if lines.is_empty() {
        out.push_str("no statements recorded (is [compat] set in the proxy's config?)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{one_line, render};

    #[test]
    fn columns_are_aligned() {
        let lines = vec![
            vec!["route".to_string(), "count".to_string()],
            vec!["scatter".to_string(), "12".to_string()],
        ];
        assert_eq!(render(&lines), "route   | count\nscatter | 12\n");
        assert!(render(&[]).starts_with("no statements"));
        assert_eq!(
            one_line("CREATE TABLE t (\n    a int,\r\n\tb int\n)"),
            "CREATE TABLE t ( a int, b int )"
        );
    }
}
