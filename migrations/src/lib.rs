//! SQL schema for SQLite and MySQL/MariaDB, and the migrator.
