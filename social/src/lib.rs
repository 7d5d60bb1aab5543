//! Social REST API, store, media and application handlers.
