//! `edgeloop-collector rules check` and `rules test`, run as an engineer runs them: the real
//! binary on the example files and on a recorded bearing fault.

// Test code: a failed step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use edgeloop_collector::automation::synthetic::{SyntheticConfig, SyntheticSet};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_edgeloop-collector"))
        .current_dir(workspace())
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run edgeloop-collector");
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (output.status.code(), text(output.stdout), text(output.stderr))
}

#[test]
fn the_example_rules_check_clean_against_the_example_config() {
    let (code, out, err) =
        run(&["rules", "check", "config/fleet-rules.example.toml", "--config", "config/collector.example.toml"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("ok, 8 rule(s)"), "{out}");
}

#[test]
fn a_broken_rule_file_is_refused_naming_each_rule_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.toml");
    std::fs::write(
        &file,
        "[rules.hot]\nkind = \"threshold\"\nsensors = \"*.temp\"\n\n[rules.trend]\nkind = \"predict\"\nsensors = \"*\"\nlimit = 4.5\nabove = 3.0\n",
    )
    .unwrap();
    let (code, out, err) = run(&["rules", "check", file.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}{err}");
    let out = format!("{out}{err}");
    assert!(out.contains("rules.hot: a threshold rule needs `above` or `below`"), "{out}");
    assert!(out.contains("rules.trend.above: a predict rule does not use `above`"), "{out}");
    assert!(out.contains("rules.trend.horizon"), "{out}");
}

#[test]
fn a_recorded_bearing_fault_replays_into_a_predictive_alert() {
    let dir = tempfile::tempdir().unwrap();
    let set = SyntheticSet::generate(SyntheticConfig { faulty: 1, healthy: 0, ..SyntheticConfig::default() });
    let recording = dir.path().join("bearing.jsonl");
    let mut f = std::fs::File::create(&recording).unwrap();
    for (ts, v) in set.machines[0].readings(&set.config).filter(|(_, v)| v.is_finite()) {
        writeln!(f, r#"{{"ts_ns":{ts},"sensor":"press-3.de.vel_rms","value":{v}}}"#).unwrap();
    }
    drop(f);
    let (code, out, err) = run(&[
        "rules",
        "test",
        "config/fleet-rules.example.toml",
        "--replay",
        recording.to_str().unwrap(),
        "--agent",
        "gw-press",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.lines().any(|l| l.contains("alert firing bearing_zone_d") && l.contains("reaches 4.5")), "{out}");
}
