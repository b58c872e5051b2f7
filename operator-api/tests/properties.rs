//! Properties over arbitrary input: templates and the masker never panic, shell values
//! always arrive intact, masked text never holds a secret.

use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use sluice_operator_api::secrets::Masker;
use sluice_operator_api::template::{self, TemplateVars};

fn vars(conf: serde_json::Value) -> TemplateVars {
    let t = Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap();
    TemplateVars::new("d", "r", "t", 1, t, (t, t), serde_json::json!({}), conf)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn templates_never_panic(source in ".{0,80}", value in ".{0,20}") {
        let v = vars(serde_json::json!({ "v": value }));
        let _ = template::check(&source);
        let _ = template::render(&source, &v);
        let _ = template::render_shell(&source, &v);
        let _ = template::render_escaped(&source, &v, None, template::url_path_segment);
        let _ = template::upstream_references(&source);
    }

    #[test]
    fn template_syntax_in_any_shape_never_panics(
        parts in proptest::collection::vec(
            prop_oneof![
                Just("{{".to_string()), Just("}}".to_string()), Just("{%".to_string()),
                Just("%}".to_string()), Just(" if ".to_string()), Just(" for x in ".to_string()),
                Just("conf.v".to_string()), Just("'".to_string()), Just("\"".to_string()),
                Just("$(".to_string()), Just(")".to_string()), Just("\\".to_string()),
                "[a-z ]{0,4}",
            ],
            0..12,
        )
    ) {
        let source = parts.concat();
        let v = vars(serde_json::json!({ "v": "x" }));
        let _ = template::check(&source);
        let _ = template::render_shell(&source, &v);
    }

    #[test]
    fn masked_text_never_holds_a_secret(
        secrets in proptest::collection::vec("[a-zA-Z0-9]{4,12}", 1..4),
        text in "[ -~]{0,60}",
        at in 0usize..60,
    ) {
        let masker = Masker::new(secrets.clone());
        let at = at.min(text.len());
        let with_secret = format!("{}{}{}", &text[..at], secrets[0], &text[at..]);
        let masked = masker.mask(&with_secret);
        for secret in &secrets {
            prop_assert!(!masked.contains(secret.as_str()), "{masked:?} holds {secret:?}");
        }
    }
}

proptest! {
    // Each case starts a shell: fewer cases.
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn shell_values_arrive_intact(value in "[^\u{0}]{0,40}") {
        let v = vars(serde_json::json!({ "v": value }));
        let command = template::render_shell(
            r#"printf '%s|' {{ conf.v }} "{{ conf.v }}""#,
            &v,
        ).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&command.script)
            .env_clear()
            .envs(command.args.iter().map(|(k, val)| (k, val)))
            .output()
            .unwrap();
        prop_assert!(out.status.success());
        prop_assert_eq!(
            String::from_utf8_lossy(&out.stdout).into_owned(),
            format!("{value}|{value}|")
        );
    }
}
