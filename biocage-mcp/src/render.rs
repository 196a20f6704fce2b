//! A run's [`ExecutionResult`] as MCP content: output and errors as text, figures as
//! images, rich displays as text (HTML and SVG also as embedded resources), and the
//! result itself as structured content.

use std::collections::HashSet;
use std::time::Duration;

use biocage_core::{ErrorKind, ExecutionResult, SandboxConfig};
use rmcp::model::{CallToolResult, ContentBlock, ResourceContents};
use serde_json::Value;

use crate::tools::{human_secs, human_size};

/// Most characters of one stream (or display) put in text content for the model; the
/// structured content keeps everything. Past it, the head and the tail are kept.
const TEXT_CAP: usize = 64 << 10;
/// Of [`TEXT_CAP`], how much is taken from the head.
const TEXT_HEAD: usize = 16 << 10;

/// `text` cut to [`TEXT_CAP`] characters around a note saying how much was left out.
pub(crate) fn cap_text(text: &str, what: &str) -> String {
    let total = text.chars().count();
    if total <= TEXT_CAP {
        return text.to_string();
    }
    let tail = TEXT_CAP - TEXT_HEAD;
    let head: String = text.chars().take(TEXT_HEAD).collect();
    let end: String = text.chars().skip(total - tail).collect();
    format!(
        "{head}\n[... {} characters of {what} left out here; structuredContent.{what} has all of it ...]\n{end}",
        total - TEXT_CAP
    )
}

/// What a result's error means, for the model; `None` for a plain success.
fn status_lines(r: &ExecutionResult, timeout: Duration, config: &SandboxConfig) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(e) = &r.error {
        let name = e.name.as_deref().unwrap_or("");
        let line = match e.kind {
            ErrorKind::Exception if name == "SyntaxError" || name == "IndentationError" => {
                let at = match (e.line, e.offset) {
                    (Some(l), Some(c)) => format!(" at line {l}, column {c}"),
                    (Some(l), None) => format!(" at line {l}"),
                    _ => String::new(),
                };
                format!("{name}{at}: {}. Nothing ran; the state is unchanged.", e.message)
            }
            ErrorKind::Exception => {
                let what = if e.message.is_empty() {
                    name.to_string()
                } else {
                    format!("{name}: {}", e.message)
                };
                format!("The code raised {what}. What ran before it (and its state) is kept.")
            }
            ErrorKind::Timeout => format!(
                "Timeout: the run was stopped at its time limit of {} (KeyboardInterrupt). Pass a larger timeout for longer work.",
                human_secs(timeout)
            ),
            ErrorKind::Oom => format!(
                "Out of memory: the run went over the sandbox's memory limit of {}. The session is still usable; use less memory (smaller data, chunks).",
                human_size(config.memory_bytes)
            ),
            ErrorKind::Crashed => format!(
                "The Python interpreter crashed{}: {}",
                if name.is_empty() { String::new() } else { format!(" ({name})") },
                e.message
            ),
            ErrorKind::Sandbox => format!("The sandbox failed: {}", e.message),
            ErrorKind::Exit => format!(
                "The code called sys.exit({}): the run ended there; the session and its state are kept.",
                r.exit_code
            ),
            _ => format!("The run failed: {}", e.message),
        };
        lines.push(line);
    }
    if r.state_lost {
        lines.push(
            "STATE LOST: the interpreter was replaced, so every variable, import, function and class from earlier calls is gone (files remain). Run your setup code again."
                .into(),
        );
    }
    if r.stdout_truncated || r.stderr_truncated {
        let which = match (r.stdout_truncated, r.stderr_truncated) {
            (true, true) => "stdout and stderr were",
            (true, false) => "stdout was",
            _ => "stderr was",
        };
        lines.push(format!(
            "Note: {which} cut at the {} output cap; print less (summaries, head()).",
            human_size(config.output_cap as u64)
        ));
    }
    if r.images_truncated {
        lines.push("Note: some figures were left out (too many, or too large); close figures you do not need (plt.close()).".into());
    }
    if r.displays_truncated {
        lines.push("Note: some rich displays were left out (over their caps).".into());
    }
    if r.value_truncated {
        lines.push("Note: the value's repr was cut at its cap.".into());
    }
    lines
}

/// The structured content: the result as JSON, with PNG payloads left empty (each
/// figure is an image block).
fn structured(r: &ExecutionResult) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    if let Some(images) = v.get_mut("images").and_then(Value::as_array_mut) {
        for image in images {
            if let Some(data) = image.get_mut("data") {
                *data = Value::String(String::new());
            }
        }
    }
    if let Some(displays) = v.get_mut("displays").and_then(Value::as_array_mut) {
        for display in displays {
            if let Some(png) = display.get_mut("image/png") {
                *png = Value::String(String::new());
            }
        }
    }
    v
}

/// The tool result of a finished run: `isError` unless it succeeded.
pub(crate) fn run_result(
    r: &ExecutionResult,
    timeout: Duration,
    config: &SandboxConfig,
) -> CallToolResult {
    let mut blocks = Vec::new();
    let mut text = String::new();
    if !r.stdout.is_empty() {
        text.push_str(&cap_text(&r.stdout, "stdout"));
    }
    if !r.stderr.is_empty() {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str("[stderr]\n");
        text.push_str(&cap_text(&r.stderr, "stderr"));
    }
    // A traceback that did not reach stderr (it normally does) is shown all the same.
    if let Some(tb) = r.error.as_ref().and_then(|e| e.traceback.as_deref()) {
        if !tb.trim().is_empty() && !r.stderr.contains(tb.trim()) {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&cap_text(tb, "error.traceback"));
        }
    }
    if !text.is_empty() {
        blocks.push(ContentBlock::text(text));
    }
    let mut shown_png: HashSet<&str> = HashSet::new();
    for (i, display) in r.displays.iter().enumerate() {
        let label = display
            .get("text/markdown")
            .or_else(|| display.get("text/plain"));
        if let Some(label) = label {
            blocks.push(ContentBlock::text(cap_text(label, "displays")));
        }
        // Displays are the sandbox's choice: nothing a client renders may run. HTML
        // goes through a sanitiser (no scripts, handlers or javascript: links); SVG
        // (which can script itself) is sent only as inert text.
        if let Some(html) = display.get("text/html") {
            blocks.push(ContentBlock::resource(
                ResourceContents::text(
                    ammonia::clean(html),
                    format!("biocage://display/{}.html", i + 1),
                )
                .with_mime_type("text/html"),
            ));
        }
        if let Some(svg) = display.get("image/svg+xml") {
            blocks.push(ContentBlock::resource(
                ResourceContents::text(svg.clone(), format!("biocage://display/{}.svg.txt", i + 1))
                    .with_mime_type("text/plain"),
            ));
        }
        if let Some(png) = display.get("image/png") {
            shown_png.insert(png.as_str());
            blocks.push(ContentBlock::image(png.clone(), "image/png"));
        }
    }
    if r.displays.is_empty() {
        if let Some(value) = &r.value {
            blocks.push(ContentBlock::text(cap_text(value, "value")));
        }
    }
    for image in &r.images {
        if !shown_png.contains(image.data.as_str()) {
            blocks.push(ContentBlock::image(image.data.clone(), image.mime.clone()));
        }
    }
    let status = status_lines(r, timeout, config);
    if !status.is_empty() {
        blocks.push(ContentBlock::text(status.join("\n")));
    }
    if blocks.is_empty() {
        blocks.push(ContentBlock::text(format!(
            "(no output; ran in {:.3} s)",
            r.execution_time
        )));
    }
    let mut result = if r.success {
        CallToolResult::success(blocks)
    } else {
        CallToolResult::error(blocks)
    };
    result.structured_content = Some(structured(r));
    result
}

/// A tool-level failure: a sentence the model reads (`isError`).
pub(crate) fn failure(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.into())])
}

/// A plain success with one text block.
pub(crate) fn text(message: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(message.into())])
}

#[cfg(test)]
mod tests {
    use super::*;
    use biocage_core::{ExecutionError, Image};
    use std::collections::BTreeMap;

    fn ok(stdout: &str) -> ExecutionResult {
        let mut r = ExecutionResult::sandbox_failure("", false);
        r.success = true;
        r.exit_code = 0;
        r.error = None;
        r.stdout = stdout.into();
        r
    }

    fn texts(r: &CallToolResult) -> Vec<String> {
        r.content
            .iter()
            .filter_map(|b| b.as_text().map(|t| t.text.clone()))
            .collect()
    }

    #[test]
    fn success_is_output_and_structured_result() {
        let config = SandboxConfig::default();
        let r = ok("hello\n");
        let out = run_result(&r, config.timeout, &config);
        assert_eq!(out.is_error, Some(false));
        assert_eq!(texts(&out), ["hello\n"]);
        let s = out.structured_content.unwrap();
        assert_eq!(s["stdout"], "hello\n");
        assert_eq!(s["success"], true);
        assert!(s["error"].is_null());
        let empty = run_result(&ok(""), config.timeout, &config);
        assert!(texts(&empty)[0].starts_with("(no output"));
    }

    #[test]
    fn an_exception_is_an_error_with_its_traceback_and_a_plain_summary() {
        let config = SandboxConfig::default();
        let mut r = ok("before\n");
        r.success = false;
        r.exit_code = 1;
        r.stderr =
            "Traceback (most recent call last):\n  File \"<cell>\", line 1\nValueError: bad\n"
                .into();
        r.error = Some(ExecutionError {
            kind: ErrorKind::Exception,
            name: Some("ValueError".into()),
            message: "bad".into(),
            traceback: Some(r.stderr.clone()),
            line: None,
            offset: None,
            truncated: false,
        });
        let out = run_result(&r, config.timeout, &config);
        assert_eq!(out.is_error, Some(true));
        let t = texts(&out);
        assert!(t[0].starts_with("before\n[stderr]\nTraceback"), "{t:?}");
        assert_eq!(t[0].matches("Traceback").count(), 1, "{t:?}");
        assert!(t[1].contains("ValueError: bad"), "{t:?}");
    }

    #[test]
    fn timeouts_and_lost_state_are_said_plainly() {
        let config = SandboxConfig::default();
        let mut r = ok("");
        r.success = false;
        r.exit_code = 124;
        r.state_lost = true;
        r.error = Some(ExecutionError {
            kind: ErrorKind::Timeout,
            name: None,
            message: "timed out".into(),
            traceback: None,
            line: None,
            offset: None,
            truncated: false,
        });
        let out = run_result(&r, Duration::from_secs(2), &config);
        let t = texts(&out).join("\n");
        assert!(t.contains("time limit of 2 s"), "{t}");
        assert!(t.contains("STATE LOST"), "{t}");
    }

    #[test]
    fn displays_never_carry_active_content() {
        let mut d = BTreeMap::new();
        d.insert(
            "text/html".to_string(),
            "<table onmouseover=\"alert(1)\"><tr><td>ok</td></tr></table><script>fetch('//x')</script><a href=\"javascript:alert(2)\">x</a><img src=x onerror=alert(3)>".to_string(),
        );
        d.insert(
            "image/svg+xml".to_string(),
            "<svg onload=\"alert(4)\"><script>alert(5)</script></svg>".to_string(),
        );
        let config = SandboxConfig::default();
        let mut r = ok("");
        r.displays = vec![d];
        let out = run_result(&r, config.timeout, &config);
        let blocks: Vec<serde_json::Value> = out
            .content
            .iter()
            .map(|b| serde_json::to_value(b).unwrap())
            .collect();
        let rendered: Vec<&serde_json::Value> = blocks
            .iter()
            .filter(|b| b["resource"]["mimeType"] != "text/plain")
            .collect();
        let all = serde_json::to_string(&rendered).unwrap();
        assert!(all.contains("<td>ok</td>"), "{all}");
        for active in ["<script", "onmouseover", "onerror", "onload", "javascript:"] {
            assert!(!all.contains(active), "{active} reached the client: {all}");
        }
        let svg = blocks
            .iter()
            .find(|b| {
                b["resource"]["uri"]
                    .as_str()
                    .is_some_and(|u| u.contains(".svg"))
            })
            .unwrap();
        assert_eq!(
            svg["resource"]["mimeType"], "text/plain",
            "SVG only as inert text"
        );
    }

    #[test]
    fn figures_are_images_displays_are_text_and_html_resources() {
        let config = SandboxConfig::default();
        let mut r = ok("");
        let mut table = BTreeMap::new();
        table.insert("text/plain".to_string(), "   a\n0  1".to_string());
        table.insert("text/html".to_string(), "<table></table>".to_string());
        let mut fig = BTreeMap::new();
        fig.insert("text/plain".to_string(), "<Figure>".to_string());
        fig.insert("image/png".to_string(), "UE5H".to_string());
        r.displays = vec![table, fig];
        r.images = vec![
            Image {
                mime: "image/png".into(),
                data: "UE5H".into(),
            },
            Image {
                mime: "image/png".into(),
                data: "T1RIRVI=".into(),
            },
        ];
        let out = run_result(&r, config.timeout, &config);
        let images: Vec<&str> = out
            .content
            .iter()
            .filter_map(|b| b.as_image().map(|i| i.data.as_str()))
            .collect();
        assert_eq!(
            images,
            ["UE5H", "T1RIRVI="],
            "a displayed figure is sent once"
        );
        let html = out.content.iter().find_map(|b| b.as_resource()).unwrap();
        assert!(serde_json::to_string(html).unwrap().contains("text/html"));
        assert!(texts(&out).contains(&"   a\n0  1".to_string()));
        let s = out.structured_content.unwrap();
        assert_eq!(s["images"][0]["data"], "");
        assert_eq!(s["displays"][1]["image/png"], "");
    }

    #[test]
    fn long_output_keeps_head_and_tail() {
        let long = format!("{}{}", "a".repeat(100_000), "END");
        let cut = cap_text(&long, "stdout");
        assert!(cut.len() < 70_000);
        assert!(cut.starts_with("aaa") && cut.ends_with("END"));
        assert!(cut.contains("structuredContent.stdout"));
    }
}
