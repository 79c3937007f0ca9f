//! One module per subcommand.

pub mod explore;
pub mod lspci;
pub mod scenario;
pub mod xenstored;
