//! Statements for auth.
