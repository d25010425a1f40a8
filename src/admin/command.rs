//! The console's commands and how a query text becomes a list of them.

use crate::wire::backend::ErrorFields;

/// One admin console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Show(View),
    Reload,
    Pause,
    Resume,
    /// SHOW JOBS: rebalancing jobs and their steps, from the catalog.
    Jobs,
    /// REBALANCE <target>: plan and record a rebalancing job.
    Rebalance(crate::rebalance::Target),
    /// CANCEL JOB n.
    CancelJob(i64),
}

/// What a SHOW command lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Shards,
    Servers,
    Pools,
    Clients,
    Stats,
    ShardMap,
    Config,
    Version,
}

/// Every command, for the hint of an error.
pub const COMMANDS: &str = "SHOW SHARDS, SHOW SERVERS, SHOW POOLS, SHOW CLIENTS, SHOW STATS, SHOW SHARD_MAP, SHOW CONFIG, SHOW VERSION, SHOW JOBS, RELOAD, PAUSE, RESUME, REBALANCE add-shard N | drain N | move LOWER UPPER N | modulo-to-hash, CANCEL JOB n";

const VIEWS: [(&str, View); 8] = [
    ("SHARDS", View::Shards),
    ("SERVERS", View::Servers),
    ("POOLS", View::Pools),
    ("CLIENTS", View::Clients),
    ("STATS", View::Stats),
    ("SHARD_MAP", View::ShardMap),
    ("CONFIG", View::Config),
    ("VERSION", View::Version),
];

/// Splits a query on `;` and parses each non-empty piece (case-insensitive). An empty list means
/// an empty query.
pub fn parse(query: &str) -> Result<Vec<Command>, ErrorFields> {
    query
        .split(';')
        .filter(|piece| !piece.trim().is_empty())
        .map(parse_one)
        .collect()
}

fn parse_one(text: &str) -> Result<Command, ErrorFields> {
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let command = match words.as_slice() {
        ["SHOW", "JOBS"] => Some(Command::Jobs),
        ["REBALANCE", ..] => {
            let lower: Vec<String> = text
                .split_whitespace()
                .skip(1)
                .map(|w| w.to_ascii_lowercase())
                .collect();
            let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
            return crate::rebalance::plan::parse_target(&lower)
                .map(Command::Rebalance)
                .map_err(|e| ErrorFields::error("42601", format!("REBALANCE: {e}")));
        }
        ["CANCEL", "JOB", n] => n.parse().ok().map(Command::CancelJob),
        ["SHOW", what] => VIEWS
            .iter()
            .find(|(name, _)| name == what)
            .map(|(_, view)| Command::Show(*view)),
        ["RELOAD"] => Some(Command::Reload),
        ["PAUSE"] => Some(Command::Pause),
        ["RESUME"] => Some(Command::Resume),
        _ => None,
    };
    command.ok_or_else(|| {
        ErrorFields::error(
            "0A000",
            format!(
                "the pgshard admin console does not know the command \"{}\"; it runs only its own commands, not SQL",
                text.trim()
            ),
        )
        .with_hint(format!("commands: {COMMANDS}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_case_insensitive_with_optional_semicolons() {
        assert_eq!(parse("show shards"), Ok(vec![Command::Show(View::Shards)]));
        assert_eq!(
            parse("  Show   Shard_Map ;"),
            Ok(vec![Command::Show(View::ShardMap)])
        );
        assert_eq!(
            parse("pause; RESUME;"),
            Ok(vec![Command::Pause, Command::Resume])
        );
        assert_eq!(parse(" ; "), Ok(vec![]));
        assert_eq!(parse("reload"), Ok(vec![Command::Reload]));
    }

    #[test]
    fn unknown_commands_are_refused_with_the_list() {
        for bad in [
            "SELECT 1",
            "SHOW",
            "SHOW TABLES",
            "PAUSE now",
            "show shards x",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.code, "0A000", "{bad}");
            assert!(e.hint.as_deref().unwrap().contains("SHOW SHARD_MAP"));
        }
        assert!(parse("SHOW VERSION; bogus").is_err());
    }
}
