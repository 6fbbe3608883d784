//! One module per subcommand.

pub mod ca;
pub mod check;
pub mod explain;
pub mod iptables;
pub mod mesh;
pub mod passthrough;
pub mod proxy;
pub mod rules;
pub mod serve;

use meshpass_settings::SettingErrors;
use std::process::ExitCode;

/// Exit status for invalid input: every error printed, nothing applied.
pub const EXIT_INVALID: u8 = 2;

/// Prints every validation error and returns the invalid-input exit status.
pub fn invalid(errors: &SettingErrors) -> ExitCode {
    eprintln!("error: {} invalid value(s); nothing was applied", errors.len());
    for e in errors.iter() {
        eprintln!("  {e}");
    }
    ExitCode::from(EXIT_INVALID)
}
