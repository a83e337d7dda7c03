//! The chart as Helm sees it: `helm lint --strict` passes, and what `helm template` renders for a
//! release in a namespace is, template by template, what the tests' own renderer
//! (`inflight_testbed::chart::render`) applies on the bed, so the bed tests run the chart's
//! objects exactly. Needs Helm, which `inflight-testbed build` makes (`scripts/test.sh` does).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use inflight_testbed::chart;

/// The documents of a YAML stream, each as its lines of content, in a fixed order: Helm adds
/// `# Source:` to each, keeps blank lines a template's trailing newlines leave, and sorts the
/// documents of a template by kind (the order it installs them in).
fn documents(text: &str) -> Vec<Vec<&str>> {
    let mut docs: Vec<Vec<&str>> = text
        .split("\n---")
        .map(|doc| {
            doc.lines()
                .map(str::trim_end)
                .filter(|l| !l.is_empty() && *l != "---" && !l.starts_with("# Source: "))
                .collect::<Vec<_>>()
        })
        .filter(|doc| !doc.is_empty())
        .collect();
    docs.sort();
    docs
}

#[test]
#[ignore = "needs Helm, built with the test bed's components (scripts/test.sh: inflight-testbed build)"]
fn testbed_helm_lints_the_chart_and_renders_what_the_tests_apply() {
    let lint = chart::helm(&["lint", "--strict"]).unwrap();
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
    let templates: Vec<String> = std::fs::read_dir(chart::dir().join("templates"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml"))
        .collect();
    assert!(templates.len() >= 4, "{templates:?}");
    for template in templates {
        let show = format!("templates/{template}");
        let helm =
            chart::helm(&["template", "inflight", "-n", "t-1", "--show-only", &show]).unwrap();
        let ours = chart::render(&template, "t-1").unwrap();
        assert_eq!(documents(&helm), documents(&ours), "{template}");
    }
}
