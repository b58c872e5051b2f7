//! The DAG parser over arbitrary input: a broken file gets errors, never a panic.

use std::path::Path;

use proptest::prelude::*;
use sluice_core::dag::parse_dag;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = parse_dag(Path::new("fuzz.yaml"), &text, &sluice_operators::basic());
    }

    #[test]
    fn dag_shaped_yaml_never_panics(
        dag_id in "[a-z_]{0,8}",
        schedule in prop_oneof![Just("@daily".to_string()), Just("*/15 * * * *".to_string()), "[0-9*/ ,-]{0,16}"],
        tasks in proptest::collection::vec(
            ("[a-c]{1,2}", prop_oneof![Just("noop"), Just("shell"), Just("sleep"), Just("nope")],
             proptest::collection::vec("[a-c]{1,2}", 0..3),
             "[ -~]{0,12}", "[0-9a-z ]{0,8}"),
            0..6,
        ),
    ) {
        let mut yaml = format!("dag_id: '{dag_id}'\nschedule: '{schedule}'\ntasks:\n");
        for (id, operator, deps, command, retry_delay) in tasks {
            let command = command.replace('\'', "''");
            yaml.push_str(&format!(
                "  - id: {id}\n    operator: {operator}\n    depends_on: [{}]\n    retry_delay: '{retry_delay}'\n    config: {{command: '{command}'}}\n",
                deps.join(", ")
            ));
        }
        let _ = parse_dag(Path::new("fuzz.yaml"), &yaml, &sluice_operators::basic());
    }
}
