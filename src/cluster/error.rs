//! Errors of the local cluster manager. Each one says what was being done and to which instance, so a
//! failed `cluster up` can be fixed without reading the code.

use std::path::PathBuf;

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No PostgreSQL server binaries were found anywhere we look.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH, via `pg_config --bindir` or \
         under /usr/lib/postgresql/*/bin; install with `apt-get install -y postgresql` (Debian/Ubuntu)"
    )]
    NoBinaries,
    /// We run as root, so Postgres needs an unprivileged OS user, and there is none.
    #[error(
        "running as root, but the OS user `postgres` does not exist; Postgres refuses to run as root \
         (install the `postgresql` package, which creates that user, or run as an ordinary user)"
    )]
    NoServerUser,
    /// A file-system operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A Postgres program (initdb, pg_ctl, cp) exited unsuccessfully.
    #[error("{what} failed ({status}): {output}")]
    Command {
        what: String,
        status: String,
        output: String,
    },
    /// A bootstrap statement or connection failed.
    #[error("{context}: {source}")]
    Postgres {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// The cluster directory holds no usable `cluster.json`.
    #[error("cluster state {path}: {message}")]
    State { path: PathBuf, message: String },
    /// The cluster directory cannot be used as asked.
    #[error("cluster directory {path}: {message}")]
    Layout { path: PathBuf, message: String },
    /// Writing the first shard map into the catalog failed.
    #[error("{context}: {source}")]
    Catalog {
        context: String,
        #[source]
        source: crate::catalog::CatalogError,
    },
    /// The requested cluster cannot be built as asked (e.g. `--sync-any-one` with one replica).
    #[error("{0}")]
    Spec(String),
    /// A condition the cluster waits for (a replica streaming, a promotion) did not come true in time.
    #[error("{what} did not happen within {seconds} s{detail}")]
    Timeout {
        what: String,
        seconds: u64,
        /// Extra context, e.g. the end of the server log (starts with a newline when present).
        detail: String,
    },
    /// The operation needs an instance of another role (e.g. promoting a primary).
    #[error("instance `{name}` is a {role}; {message}")]
    WrongRole {
        name: String,
        role: String,
        message: String,
    },
    /// No instance of that name exists in the cluster.
    #[error("no instance named `{0}` in this cluster")]
    NoInstance(String),
}

impl ClusterError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ClusterError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn pg(context: impl Into<String>, source: tokio_postgres::Error) -> Self {
        ClusterError::Postgres {
            context: context.into(),
            source,
        }
    }
}
