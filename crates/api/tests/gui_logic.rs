//! The GUI's logic that needs no browser (`assets/logic.js`: item validation, the batch
//! request, the values in force and their source, selection and paging, outcome texts),
//! unit-tested under `node --test` (`e2e/logic.test.mjs`). Needs `node`; without it the test
//! is skipped with a message, unless `CI` is set: then it fails.

use meshpass_test_support::tools;

#[test]
fn gui_logic_unit_tests() -> Result<(), String> {
    if !tools::node_ready("gui_logic") {
        return Ok(());
    }
    tools::run_node_tests("e2e/logic.test.mjs")
}
