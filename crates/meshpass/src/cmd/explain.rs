//! `meshpass explain` (being written).

use std::process::ExitCode;

/// `meshpass explain` flags.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `meshpass explain`.
pub fn run(_a: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet")
}
