//! Accounts: sign-up with an e-mail code, sign-in, password checks ([`routes`]), and Google
//! sign-in and sign-up ([`google`]).

pub mod google;
pub mod routes;
