//! One module per subcommand.

pub mod adapters;
pub mod doctor;
pub mod explore;
pub use lab::explore_devices;
pub mod lifecycle;
pub mod lspci;
pub mod scenario;
pub mod simcmd;
pub mod watch;
pub mod xenstored;
