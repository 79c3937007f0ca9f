//! One module per subcommand.

pub mod lspci;
pub mod xenstored;
