//! The ports: what the founding needs from the outside world, as small traits with their own
//! error enums. Adapter crates implement them; with the `mocks` feature each has a mockall double
//! (`MockRepo`, `MockRepoTx`, `MockCompute`, `MockDns`, `MockPki`).

pub mod compute;
pub mod dns;
pub mod pki;
pub mod repo;
