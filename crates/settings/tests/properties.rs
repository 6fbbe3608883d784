//! Properties over arbitrary input: parsing never panics; whatever is accepted renders back to
//! annotations that parse to the same settings; and accepted values contain nothing but the
//! characters of ports, addresses, interface names and separators, so nothing can be
//! smuggled into a rule.

use meshpass_settings::{keys, Settings};
use proptest::prelude::*;
use std::collections::BTreeMap;

fn key() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(keys::ALL.to_vec())
}

/// Values built from the pieces real values are made of, plus hostile characters.
fn value() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[0-9]{1,6}",
        "[0-9]{1,5}-[0-9]{1,5}",
        "(10|192|198|127)\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}/[0-9]{1,2}",
        "(2001:db8|fd00|::)(:[0-9a-f]{0,4}){0,3}/[0-9]{1,3}",
        "[a-z][a-z0-9._-]{0,16}",
        Just("*".to_string()),
        Just("".to_string()),
        "[ ;\\n\\t!\"'$`|&-]{1,3}",
        "REDIRECT|TPROXY|NONE|tproxy",
    ];
    proptest::collection::vec(piece, 0..5).prop_map(|v| v.join(","))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn accepted_values_round_trip_and_are_inert(pairs in proptest::collection::vec((key(), value()), 0..6)) {
        let ann: BTreeMap<String, String> = pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        if let Ok(s) = Settings::from_annotations(&ann) {
            let rendered = s.to_annotations();
            prop_assert_eq!(Settings::from_annotations(&rendered).expect("rendered settings parse"), s);
            for v in rendered.values() {
                prop_assert!(
                    v.chars().all(|c| c.is_ascii_alphanumeric() || ",.:/*-_".contains(c)),
                    "rendered value {:?} has a character outside the safe set", v
                );
            }
        }
    }
}
