//! The `sluice` command over the runtime library: `cli` parses and runs the subcommands,
//! `top` is the live terminal view of running pods, `scaffold` creates a plugin project from
//! `templates/plugin/`. `main.rs` only sets up logging and exit codes.

pub mod acls;
pub mod cli;
pub mod scaffold;
pub mod top;
