//! A local development cluster of real Postgres instances (initdb/pg_ctl) for the demo and tests.
