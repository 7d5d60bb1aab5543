//! Accounts, the first feature folder of the feature-first layout: today Google sign-in
//! ([`google`]); sign-up, sign-in and e-mail codes still live in `routes/auth.rs` until the rest of
//! the service is reorganised.

pub mod google;
