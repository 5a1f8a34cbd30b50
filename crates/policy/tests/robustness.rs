//! Broken input of every sort gives problems, never a panic, and in bounded time.

use meshlimit_policy::{MAX_FILE_BYTES, Problem, load_paths, parse_documents};

const BROKEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/broken");

fn rejected(text: &str) -> Vec<Problem> {
    match parse_documents("in.yaml", text) {
        Ok(p) => panic!("accepted: {:?}", p.resources),
        Err(problems) => {
            assert!(!problems.is_empty());
            for p in &problems {
                assert_eq!(p.file, "in.yaml");
                assert!(!p.message.is_empty());
            }
            problems
        }
    }
}

#[test]
fn every_broken_fixture_is_rejected_with_its_file_named() {
    let mut files: Vec<_> = std::fs::read_dir(BROKEN)
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= 8);
    for file in files {
        let problems = load_paths(&[&file]).expect_err(&file.display().to_string());
        let label = file.display().to_string();
        assert!(problems.iter().all(|p| p.file == label), "{problems:#?}");
    }
}

#[test]
fn each_broken_fixture_says_why() {
    let reason = |name: &str| -> Vec<String> {
        load_paths(&[format!("{BROKEN}/{name}")])
            .expect_err(name)
            .iter()
            .map(|p| {
                p.to_string()
                    .split_once(": ")
                    .map(|(_, r)| r.to_string())
                    .unwrap_or_default()
            })
            .collect()
    };
    assert!(
        reason("duplicate-key.yaml")[0].contains("duplicate entry with key \"name\""),
        "{:?}",
        reason("duplicate-key.yaml")
    );
    assert!(
        reason("bad-indentation.yaml")[0].starts_with("document 1: invalid YAML:"),
        "{:?}",
        reason("bad-indentation.yaml")
    );
    assert_eq!(
        reason("billion-laughs.yaml"),
        ["document 1: invalid YAML: repetition limit exceeded"]
    );
    assert!(
        reason("not-utf8.yaml")[0].starts_with("file is not UTF-8 text"),
        "{:?}",
        reason("not-utf8.yaml")
    );
    assert_eq!(
        reason("second-document-bad.yaml"),
        [
            "document 2 (Dataplane dp): networking.inbound[0].port: must be in inclusive range [1, 65535]"
        ]
    );
    assert_eq!(
        reason("wrong-types.yaml"),
        [
            "document 1 (MeshRateLimit): name: expected a string, found a list",
            "document 1 (MeshRateLimit): mesh: expected a string, found a mapping",
            "document 1 (MeshRateLimit): spec.targetRef: expected a mapping, found a string (\"Mesh\")",
            "document 1 (MeshRateLimit): spec.rules[0].default.local.http.disabled: expected true or false, found an integer (1)",
            "document 1 (MeshRateLimit): spec.rules[0].default.local.http.requestRate: expected a mapping, found a string (\"5/s\")",
        ]
    );
}

#[test]
fn huge_numbers_are_errors() {
    let problems = load_paths(&[format!("{BROKEN}/huge-numbers.yaml")]).expect_err("huge");
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].message.contains("integer too large"),
        "{}",
        problems[0]
    );

    let rule = |v: &str| {
        format!(
            "apiVersion: kmesh.net/v1alpha1\nkind: RateLimit\nmetadata: {{name: r}}\nspec:\n  service: s\n  rules: [{{maxTokens: {v}, tokensPerFill: 1, fillInterval: 1000000}}]\n"
        )
    };
    for v in [
        "1.0e400", "-1.0e400", ".nan", ".inf", "1e19", "1.5", "true", "\"100\"",
    ] {
        let problems = rejected(&rule(v));
        assert_eq!(
            problems[0].path, "spec.rules[0].maxTokens",
            "{v}: {problems:#?}"
        );
    }
    // Integers beyond 64 bits stop the YAML reader itself; it names the line and column.
    for v in ["18446744073709551616", "-9223372036854775809"] {
        let problems = rejected(&rule(v));
        assert_eq!(
            problems[0].message, "invalid YAML: integer too large at line 6 column 23",
            "{v}"
        );
    }
    // The largest u64 is a number, but not a bucket any data path can hold: refused where it
    // is written, so that validation never accepts what the kernel would refuse. 2^40 is the
    // largest bucket.
    let problems = rejected(&rule("18446744073709551615"));
    assert_eq!(problems[0].path, "spec.rules[0].maxTokens", "{problems:#?}");
    assert!(problems[0].message.contains("too large"), "{problems:#?}");
    assert!(parse_documents("in.yaml", &rule("1099511627776")).is_ok());

    let mrl = |num: &str, interval: &str| {
        format!(
            "type: MeshRateLimit\nname: p\nspec:\n  targetRef: {{kind: Dataplane}}\n  rules:\n    - default:\n        local:\n          http:\n            requestRate: {{num: {num}, interval: {interval}}}\n"
        )
    };
    assert_eq!(
        rejected(&mrl("4294967296", "1s"))[0].message,
        "must be at most 4294967295, found 4294967296"
    );
    assert!(
        rejected(&mrl("1", "9999999999999h"))[0]
            .message
            .contains("too large")
    );
    let problems = rejected(&mrl("1", &format!("{}s", "9".repeat(5000))));
    assert_eq!(
        problems[0].path,
        "spec.rules[0].default.local.http.requestRate.interval"
    );
    assert_eq!(
        problems[0].message,
        "invalid duration \"9999999999999999999999999999999999999999…\": too long"
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    // Past the parser's own limit of 128 levels.
    for depth in [129, 1000] {
        let flow = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let problems = rejected(&flow);
        assert!(
            problems[0].message.contains("recursion limit exceeded"),
            "{depth}: {}",
            problems[0]
        );

        let nested = format!(
            "type: Mesh\nname: x\nlabels: {}1{}\n",
            "{a: ".repeat(depth),
            "}".repeat(depth)
        );
        let problems = rejected(&nested);
        assert!(
            problems[0].message.contains("recursion limit exceeded"),
            "{depth}: {}",
            problems[0]
        );
    }
    // Deeper still is refused before the parser sees it (its time would grow with depth²).
    for depth in [1001, 100_000, 500_000] {
        let nested = format!(
            "type: Mesh\nname: x\nlabels:\n  {}1{}\n",
            "{a: ".repeat(depth),
            "}".repeat(depth)
        );
        assert_eq!(
            rejected(&nested)[0].to_string(),
            "in.yaml: flow collections ([ ], { }) are nested more than 1000 levels deep at line 4"
        );
    }
    let compact = format!("{}x\n", "- ".repeat(300_000));
    assert!(
        rejected(&compact)[0]
            .message
            .contains("recursion limit exceeded")
    );
    let block: String = (0..2_500)
        .map(|i| format!("{}k:\n", " ".repeat(i)))
        .collect();
    let problems = rejected(&block);
    assert!(
        problems[0].message.contains("recursion limit exceeded"),
        "{}",
        problems[0]
    );
    // Deep but within the parser's limit: rejected by the schema at the first wrong level.
    let spec = format!(
        "type: Mesh\nname: x\nlabels: {{a: {}1{}}}\n",
        "[".repeat(100),
        "]".repeat(100)
    );
    assert_eq!(rejected(&spec)[0].path, "labels[\"a\"]");
}

#[test]
fn files_over_the_limit_are_refused_before_parsing() {
    let doc = "type: Mesh\nname: m\n---\n";
    let text = doc.repeat(10 * 1024 * 1024 / doc.len() + 1);
    assert!(text.len() > 10 * 1024 * 1024);
    let problems = rejected(&text);
    assert_eq!(
        problems[0].message,
        format!(
            "file is {} bytes, more than the {MAX_FILE_BYTES} bytes a resource file may have",
            text.len()
        )
    );
    let dir = std::env::temp_dir().join(format!("meshlimit-policy-big-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("big.yaml");
    std::fs::write(&file, &text).expect("write");
    let problems = load_paths(&[&file]).expect_err("too big");
    assert!(
        problems[0].message.starts_with("file is 1048"),
        "{}",
        problems[0]
    );
    // Exactly at the limit is read; one byte more is not.
    let at_limit = format!("type: Mesh\nname: m\n#{}", "x".repeat(MAX_FILE_BYTES - 20));
    assert_eq!(at_limit.len(), MAX_FILE_BYTES);
    assert!(parse_documents("in.yaml", &at_limit).is_ok());
    assert!(parse_documents("in.yaml", &format!("{at_limit}x")).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn large_files_under_the_limit_still_give_precise_errors() {
    // A single 3 MB string where a name belongs.
    let text = format!("type: Mesh\nname: {}\n", "a".repeat(3 * 1024 * 1024));
    assert_eq!(rejected(&text)[0].message, "must be at most 253 characters");
    // Many documents, the last one wrong: reported with its number.
    let mut text = String::new();
    for i in 0..5_000 {
        text.push_str(&format!("type: Mesh\nname: m{i}\n---\n"));
    }
    text.push_str("type: Mesh\nname: m\nmtls: {}\n");
    let problems = rejected(&text);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].document, 5_001);
    assert_eq!(problems[0].path, "mtls");
}

#[test]
fn odd_yaml_is_an_error_or_skipped_never_a_panic() {
    for text in [
        "\t- tab",
        "key: \"unterminated",
        "*undefined_alias",
        "a: *undefined",
        "? [complex, key]\n: value",
        "!!binary aGVsbG8=",
        "type: !custom Mesh\nname: x",
        "type: Mesh\nname: x\n<<: {mesh: y}",
        "%YAML 9.9\n---\na: 1",
        "---\n...\n---\n- 1",
        "\u{0}",
        "type: Mesh\nname: x\n---\n[",
        "{type: Mesh, name: x, labels: {1: 2}}",
        "type: Mesh\nname: x\nlabels: {? [a]: b}",
    ] {
        let _ = rejected(text);
    }
    // Empty documents and comments are skipped, and counted.
    let parsed =
        parse_documents("in.yaml", "# nothing\n---\n---\ntype: Mesh\nname: x\n").expect("valid");
    assert_eq!(parsed.origins[0].document, 2);
    assert!(
        parse_documents("in.yaml", "")
            .expect("empty")
            .resources
            .is_empty()
    );
}
