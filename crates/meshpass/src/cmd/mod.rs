//! One module per subcommand.

pub(crate) mod batch;
pub(crate) mod ca;
pub(crate) mod check;
pub(crate) mod defaults;
pub(crate) mod explain;
pub(crate) mod iptables;
pub(crate) mod mesh;
pub(crate) mod passthrough;
pub(crate) mod proxy;
pub(crate) mod rules;
pub(crate) mod serve;

use meshpass_settings::SettingErrors;
use std::process::ExitCode;

/// Exit status for invalid input: every error printed, nothing applied.
pub(crate) const EXIT_INVALID: u8 = 2;

/// Prints every validation error and returns the invalid-input exit status.
pub(crate) fn invalid(errors: &SettingErrors) -> ExitCode {
    eprintln!("error: {} invalid value(s); nothing was applied", errors.len());
    for e in errors.iter() {
        eprintln!("  {e}");
    }
    ExitCode::from(EXIT_INVALID)
}
