//! `edgeloop-agent rules test`, run as an engineer runs it: the real binary on the example files.

// Test code: a failed step should stop the test with its message (the helpers are not `#[test]`s).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rules_test(extra: &[&str]) -> (Option<i32>, String, String) {
    let output: Output = Command::new(env!("CARGO_BIN_EXE_edgeloop-agent"))
        .current_dir(workspace())
        .args(["rules", "test", "config/rules.example.toml", "--replay", "config/recording.example.jsonl"])
        .args(extra)
        .env("RUST_LOG", "off")
        .output()
        .expect("run edgeloop-agent");
    let text = |b: Vec<u8>| String::from_utf8(b).expect("utf-8 output");
    (output.status.code(), text(output.stdout), text(output.stderr))
}

#[test]
fn the_example_recording_meets_its_expectations() {
    let (code, out, err) =
        rules_test(&["--expect", "config/rules.example.expect.toml", "--config", "config/agent.example.toml"]);
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .filter(|l| l.starts_with("2023-"))
        .map(|l| l.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect())
        .collect();
    let summary: Vec<[&str; 4]> = rows.iter().map(|r| [r[1], r[2], r[3], r[r.len() - 1]]).collect();
    assert_eq!(
        summary,
        [
            ["+2.200s", "spindle-overtemp", "TRIP", "node-relay, plc-stop"],
            ["+4.500s", "spindle-overtemp", "CLEAR", "-"],
            ["+6.700s", "spindle-vibration", "TRIP", "node-relay"],
            ["+6.800s", "spindle-vibration", "CLEAR", "-"],
            ["+10.000s", "fridge-warm", "ALARM", "-"],
            ["+15.100s", "pressure-spike", "TRIP", "plc-stop, siren"],
            ["+16.000s", "pressure-spike", "CLEAR", "-"],
        ],
        "{out}"
    );
    assert!(out.contains("2023-11-14T22:13:22.200Z  +2.200s"), "RFC 3339 time and offset: {out}");
    assert!(out.contains("spindle-overtemp: press-4.temperature = 90.5 (> 90)"), "{out}");
    assert!(out.contains("\nok: 8 expectations met\n"), "{out}");
}

#[test]
fn a_wrong_expectation_exits_1_and_names_the_mismatch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let expect = dir.path().join("wrong.expect.toml");
    let good = std::fs::read_to_string(workspace().join("config/rules.example.expect.toml")).expect("example");
    // The overtemp trip is at +2.2s; claim +2.5s. And a rule that did trip may not.
    let wrong = good.replace("at = \"+2.2s\"", "at = \"+2.5s\"").replace(
        "[[no_trip]]\nrule = \"fridge-warm\"",
        "[[no_trip]]\nrule = \"fridge-warm\"\n\n[[no_trip]]\nrule = \"pressure-spike\"",
    );
    assert_ne!(wrong, good);
    // Without the [[trip]] for pressure-spike, or the [[no_trip]] would be refused as a contradiction.
    let wrong = wrong
        .replace("[[trip]]\nrule = \"pressure-spike\"\nat = \"+15.1s\"\nactions = [\"plc-stop\", \"siren\"]\n", "");
    std::fs::write(&expect, wrong).expect("write");
    let (code, out, err) = rules_test(&["--expect", expect.to_str().expect("utf-8 path")]);
    assert_eq!(code, Some(1), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains(
            "wrong time: spindle-overtemp tripped at +2.200s, 300ms early; expected at +2.500s ±1ms (wrong.expect.toml line 33)"
        ),
        "{out}"
    );
    assert!(out.contains("unexpected trip: pressure-spike tripped at +15.100s"), "{out}");
    assert!(out.contains("FAILED: 2 mismatch(es); 6 of 8 expectations met"), "{out}");
}

#[test]
fn an_invalid_input_exits_2_and_names_the_file_and_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let recording = dir.path().join("bad.jsonl");
    std::fs::write(
        &recording,
        "{\"ts_ns\":1,\"sensor\":\"press-4.temperature\",\"value\":80.0}\n{\"ts_ns\":2,\"sensor\":\"press-4.temperature\"}\n",
    )
    .expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_edgeloop-agent"))
        .current_dir(workspace())
        .args(["rules", "test", "config/rules.example.toml", "--replay"])
        .arg(&recording)
        .output()
        .expect("run edgeloop-agent");
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(err.contains("bad.jsonl, line 2: a reading needs a \"value\""), "{err}");

    let (code, _, err) = rules_test(&["--expect", "config/no-such.expect.toml"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no-such.expect.toml"), "{err}");
}

/// `edgeloop-agent check` checks what `run` would start with: the config and the rule file it
/// names, so a missing file or a shutdown action the file lacks is found before deployment.
#[test]
fn check_loads_the_rule_file_the_config_names() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let rules = dir.path().join("rules.toml");
    let write_config = |shutdown: &str| {
        let text = format!(
            "[agent]\nid = \"gw-1\"\ndata_dir = \"{data}\"\nrules = \"{rules}\"\n\n\
             [commands]\nshutdown_actions = [{shutdown}]\n\n\
             [sources.sim]\nkind = \"simulated\"\nperiod = \"1s\"\n",
            data = dir.path().join("data").display(),
            rules = rules.display(),
        );
        std::fs::write(&config, text).unwrap();
    };
    let check = || {
        let out = Command::new(env!("CARGO_BIN_EXE_edgeloop-agent"))
            .args(["check".as_ref(), config.as_os_str()])
            .env("RUST_LOG", "off")
            .output()
            .expect("run edgeloop-agent");
        let text = |b: Vec<u8>| String::from_utf8(b).expect("utf-8 output");
        (out.status.code(), text(out.stdout), text(out.stderr))
    };

    write_config("\"relay\"");
    let (code, _, err) = check();
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("[agent] rules") && err.contains("rules.toml"), "the missing file is named: {err}");

    std::fs::write(&rules, "[actions.relay]\nkind = \"exec\"\nprogram = \"/bin/true\"\n").unwrap();
    write_config("\"relay\", \"siren\"");
    let (code, _, err) = check();
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("actions.siren") && err.contains("shutdown_actions"), "the undefined action is named: {err}");

    write_config("\"relay\"");
    let (code, out, err) = check();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("0 rule(s), 1 action(s)"), "{out}");
}
