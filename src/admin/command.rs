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
    /// ADD SHARD n host port [database], DROP SHARD n, ADD REPLICA n host port, DROP REPLICA n
    /// host port: a checked change of the catalog's topology.
    Topology(TopologyCommand),
}

/// A topology change as typed: ADD SHARD's database defaults to the other shards'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopologyCommand {
    AddShard {
        id: u32,
        host: String,
        port: u16,
        database: Option<String>,
    },
    Other(crate::catalog::TopologyChange),
}

impl TopologyCommand {
    /// The command tag of its CommandComplete.
    pub fn tag(&self) -> &'static str {
        use crate::catalog::TopologyChange as C;
        match self {
            TopologyCommand::AddShard { .. } => "ADD SHARD",
            TopologyCommand::Other(C::DropShard(_)) => "DROP SHARD",
            TopologyCommand::Other(C::AddReplica { .. }) => "ADD REPLICA",
            TopologyCommand::Other(C::DropReplica { .. }) => "DROP REPLICA",
            TopologyCommand::Other(C::AddShard { .. }) => "ADD SHARD",
        }
    }
}

/// ADD/DROP SHARD/REPLICA with their arguments as typed (`args`: the words after the first two).
fn parse_topology(verb: &str, noun: &str, args: &[&str]) -> Option<TopologyCommand> {
    use crate::catalog::TopologyChange as C;
    let id = |w: &str| w.parse::<u32>().ok();
    let port = |w: &str| w.parse::<u16>().ok().filter(|p| *p > 0);
    Some(match (verb, noun, args) {
        ("ADD", "SHARD", [n, host, p]) => TopologyCommand::AddShard {
            id: id(n)?,
            host: host.to_string(),
            port: port(p)?,
            database: None,
        },
        ("ADD", "SHARD", [n, host, p, db]) => TopologyCommand::AddShard {
            id: id(n)?,
            host: host.to_string(),
            port: port(p)?,
            database: Some(db.to_string()),
        },
        ("DROP", "SHARD", [n]) => TopologyCommand::Other(C::DropShard(id(n)?)),
        ("ADD", "REPLICA", [n, host, p]) => TopologyCommand::Other(C::AddReplica {
            shard: id(n)?,
            host: host.to_string(),
            port: port(p)?,
        }),
        ("DROP", "REPLICA", [n, host, p]) => TopologyCommand::Other(C::DropReplica {
            shard: id(n)?,
            host: host.to_string(),
            port: port(p)?,
        }),
        _ => return None,
    })
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
    /// Tenant schemas and their shards in the current map.
    Schemas,
    Config,
    Version,
    /// The compatibility report (`[compat]`).
    Compat,
}

/// Every command, for the hint of an error.
pub const COMMANDS: &str = "SHOW SHARDS, SHOW SERVERS, SHOW POOLS, SHOW CLIENTS, SHOW STATS, SHOW SHARD_MAP, SHOW SCHEMAS, SHOW CONFIG, SHOW VERSION, SHOW COMPAT, SHOW JOBS, RELOAD, PAUSE, RESUME, REBALANCE add-shard N | drain N | move LOWER UPPER N | move-key KEY N | move-schema SCHEMA N | modulo-to-hash, CANCEL JOB n, ADD SHARD n host port [database], DROP SHARD n, ADD REPLICA n host port, DROP REPLICA n host port";

const VIEWS: [(&str, View); 10] = [
    ("SHARDS", View::Shards),
    ("SERVERS", View::Servers),
    ("POOLS", View::Pools),
    ("CLIENTS", View::Clients),
    ("STATS", View::Stats),
    ("SHARD_MAP", View::ShardMap),
    ("SCHEMAS", View::Schemas),
    ("CONFIG", View::Config),
    ("VERSION", View::Version),
    ("COMPAT", View::Compat),
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
            // The verb in lower case; arguments as typed (a text key keeps its case).
            let lower: Vec<String> = text
                .split_whitespace()
                .skip(1)
                .enumerate()
                .map(|(i, w)| {
                    if i == 0 {
                        w.to_ascii_lowercase()
                    } else {
                        w.to_string()
                    }
                })
                .collect();
            let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
            return crate::rebalance::plan::parse_target(&lower)
                .map(Command::Rebalance)
                .map_err(|e| ErrorFields::error("42601", format!("REBALANCE: {e}")));
        }
        ["CANCEL", "JOB", n] => n.parse().ok().map(Command::CancelJob),
        [verb @ ("ADD" | "DROP"), noun @ ("SHARD" | "REPLICA"), ..] => {
            // Host names and databases as typed.
            let args: Vec<&str> = text.split_whitespace().skip(2).collect();
            let parsed = parse_topology(verb, noun, &args).map(Command::Topology);
            if parsed.is_none() {
                return Err(ErrorFields::error(
                    "42601",
                    format!(
                        "{verb} {noun}: expected {}",
                        match (*verb, *noun) {
                            ("ADD", "SHARD") => "ADD SHARD n host port [database]",
                            ("DROP", "SHARD") => "DROP SHARD n",
                            _ => "ADD|DROP REPLICA n host port",
                        }
                    ),
                ));
            }
            parsed
        }
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
    fn topology_commands_keep_their_arguments_as_typed() {
        use crate::catalog::TopologyChange as C;
        let one = |q: &str| parse(q).map(|mut v| v.remove(0));
        assert_eq!(
            one("add shard 10 DB-Host.example 5432 App"),
            Ok(Command::Topology(TopologyCommand::AddShard {
                id: 10,
                host: "DB-Host.example".into(),
                port: 5432,
                database: Some("App".into()),
            }))
        );
        assert_eq!(
            one("ADD SHARD 3 127.0.0.1 7003;"),
            Ok(Command::Topology(TopologyCommand::AddShard {
                id: 3,
                host: "127.0.0.1".into(),
                port: 7003,
                database: None,
            }))
        );
        assert_eq!(
            one("drop shard 4"),
            Ok(Command::Topology(TopologyCommand::Other(C::DropShard(4))))
        );
        assert_eq!(
            one("Drop Replica 4 h 7"),
            Ok(Command::Topology(TopologyCommand::Other(C::DropReplica {
                shard: 4,
                host: "h".into(),
                port: 7
            })))
        );
        for bad in [
            "ADD SHARD x h 1",
            "ADD SHARD 1 h 0",
            "ADD SHARD 1 h 70000",
            "DROP SHARD",
            "ADD REPLICA 1 h",
            "DROP SHARD -1",
        ] {
            assert_eq!(one(bad).unwrap_err().code, "42601", "{bad}");
        }
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

    #[test]
    fn moving_a_tenant_schema_is_a_rebalancing_target() {
        assert!(matches!(
            parse("REBALANCE Move-Schema Tenant_A 2").unwrap().as_slice(),
            [Command::Rebalance(crate::rebalance::Target::MoveSchema { schema, to: 2 })]
                if schema == "tenant_a"
        ));
        assert_eq!(
            parse("REBALANCE move-schema tenant_a").unwrap_err().code,
            "42601"
        );
        assert_eq!(parse("rebalance move-key x").unwrap_err().code, "42601");
    }
}
