//! One module per subcommand.

pub mod xenstored;
