//! The tools as a model sees them: names, JSON schemas and descriptions written from
//! the server's own configuration (limits, exposures, network), and the checked
//! arguments of each call.

use std::sync::Arc;

use biocage_core::{ExposureMode, SandboxConfig};
use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::ServerOptions;

/// `run_python`.
pub(crate) const RUN_PYTHON: &str = "run_python";
/// `reset_session`.
pub(crate) const RESET_SESSION: &str = "reset_session";
/// `interrupt`.
pub(crate) const INTERRUPT: &str = "interrupt";
/// `write_file`.
pub(crate) const WRITE_FILE: &str = "write_file";
/// `read_file`.
pub(crate) const READ_FILE: &str = "read_file";
/// `list_files`.
pub(crate) const LIST_FILES: &str = "list_files";
/// `session_info`.
pub(crate) const SESSION_INFO: &str = "session_info";

/// Sizes as people read them: "512 MiB", "1.5 GiB", "100 bytes".
pub(crate) fn human_size(bytes: u64) -> String {
    let units = [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in units {
        if bytes >= size {
            let whole = bytes / size;
            let tenths = (bytes % size) * 10 / size;
            return if tenths == 0 {
                format!("{whole} {unit}")
            } else {
                format!("{whole}.{tenths} {unit}")
            };
        }
    }
    format!("{bytes} bytes")
}

/// Seconds as people read them: "30 s", "1.5 s".
pub(crate) fn human_secs(d: std::time::Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s} s")
    }
}

/// Where files can be written and read by the file tools.
fn writable_places(config: &SandboxConfig) -> Vec<String> {
    let mut places = vec![config.workspace.clone(), "/tmp".to_string()];
    places.extend(
        config
            .exposures
            .iter()
            .filter(|e| e.mode == ExposureMode::ReadWrite)
            .map(|e| e.container.clone()),
    );
    places
}

/// The exposures, described for a model.
fn exposures_text(config: &SandboxConfig) -> String {
    if config.exposures.is_empty() {
        return "No host files or folders are exposed.".into();
    }
    let items: Vec<String> = config
        .exposures
        .iter()
        .map(|e| match e.mode {
            ExposureMode::ReadOnly => format!("{} (read-only)", e.container),
            ExposureMode::ReadWrite => format!(
                "{} (read-write, at most {} and {} files; what you change there is copied back to the host after every run)",
                e.container,
                human_size(config.rw_exposure_bytes),
                config.rw_exposure_files
            ),
        })
        .collect();
    format!("Host files exposed: {}.", items.join("; "))
}

fn packages_text(config: &SandboxConfig) -> String {
    if config.image == biocage_core::config::DEFAULT_IMAGE {
        "numpy, pandas and matplotlib are installed, with the standard library".into()
    } else {
        format!(
            "the packages of the image {} are installed (session_info lists those it was built with)",
            config.image
        )
    }
}

fn network_text(config: &SandboxConfig) -> &'static str {
    if config.network {
        "The network is on."
    } else {
        "There is NO network: pip install, downloads and web requests fail; work with what is installed and the files you are given."
    }
}

/// The server's `instructions`: the sandbox in a few lines.
pub(crate) fn instructions(config: &SandboxConfig, opts: &ServerOptions, engine: &str) -> String {
    format!(
        "This server runs Python for you in an isolated sandbox ({engine} container) with one live \
         interpreter per connection: state persists between run_python calls until reset_session. \
         {packages}. {network} Each run has a time limit of {t} (up to {max} on request); memory {mem}, \
         {cpus} CPU. Working directory {ws}. {exposures} Use write_file, read_file and list_files to \
         move files; session_info tells every limit and how it is enforced.",
        packages = capitalize(&packages_text(config)),
        network = network_text(config),
        t = human_secs(config.timeout),
        max = human_secs(opts.max_timeout),
        mem = human_size(config.memory_bytes),
        cpus = config.cpus,
        ws = config.workspace,
        exposures = exposures_text(config),
    )
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn schema(value: Value) -> Arc<JsonObject> {
    match value {
        Value::Object(map) => Arc::new(map),
        _ => Arc::new(JsonObject::new()),
    }
}

/// The output schema of `run_python`: the ExecutionResult contract.
fn execution_result_schema() -> Value {
    json!({
        "type": "object",
        "description": "The run's ExecutionResult (the JSON contract of `biocage --json run`); PNG data is left empty here because each figure is sent as an image content block.",
        "properties": {
            "success": {"type": "boolean", "description": "The code ran to the end without raising."},
            "stdout": {"type": "string"},
            "stderr": {"type": "string"},
            "exit_code": {"type": "integer", "description": "0 ok, 1 exception, 124 timeout, 137 killed or out of memory; the status of sys.exit(n)."},
            "execution_time": {"type": "number", "description": "Seconds."},
            "error": {
                "type": ["object", "null"],
                "properties": {
                    "kind": {"type": "string", "enum": ["exception", "timeout", "oom", "crashed", "sandbox", "exit"]},
                    "name": {"type": ["string", "null"]},
                    "message": {"type": "string"},
                    "traceback": {"type": ["string", "null"]}
                }
            },
            "state_lost": {"type": "boolean", "description": "The interpreter was replaced: earlier state is gone."},
            "stdout_truncated": {"type": "boolean"},
            "stderr_truncated": {"type": "boolean"},
            "value": {"type": "string", "description": "repr() of the last expression's value."},
            "images": {"type": "array"},
            "displays": {"type": "array"}
        },
        "required": ["success", "stdout", "stderr", "exit_code", "execution_time", "error", "state_lost"]
    })
}

/// Every tool, described from `config`.
pub(crate) fn list(config: &SandboxConfig, opts: &ServerOptions, engine: &str) -> Vec<Tool> {
    let ws = &config.workspace;
    let t = human_secs(config.timeout);
    let max = human_secs(opts.max_timeout);
    let places = writable_places(config).join(", ");
    let transfer = human_size(config.max_transfer_bytes);
    let run_python = format!(
        "Run Python code in your sandbox ({engine} container): one live Python 3 interpreter that keeps \
its state between calls, like a notebook kernel. Variables, imports, functions, classes and \
DataFrames from one call are there in the next, until reset_session, or until the interpreter \
has to be replaced after a crash (the result then says STATE LOST).\n\
- The last expression's value is shown, as in a notebook cell; display(obj) shows rich output \
(DataFrames also as HTML); matplotlib figures left open (or plt.show()) come back as PNG images.\n\
- {packages}. {network}\n\
- Time limit: {t} per call unless you pass timeout (seconds, at most {max}). At the limit the \
code gets KeyboardInterrupt and the state is kept.\n\
- Limits: memory {mem} (a run over it fails with MemoryError or as out of memory; the session \
survives), {cpus} CPU, {pids} processes and threads. stdout and stderr are each cut at {cap}.\n\
- Files: the working directory is {ws} (writable, {ws_size}); /tmp is writable ({tmp}); the rest \
of the file system is read-only. {exposures} write_file, read_file and list_files move files in \
and out.\n\
- There is no stdin (input() raises EOFError); sys.exit() ends the call, not the session.\n\
Returns the printed output and errors as text (a failure's traceback points into your code), \
figures as images, HTML displays also as resources, and the whole ExecutionResult as structured \
content (success, stdout, stderr, exit_code, error {{kind, name, message, traceback}}, state_lost, \
value, displays). A run that raised, timed out, ran out of memory or crashed is an error result.",
        packages = capitalize(&packages_text(config)),
        network = network_text(config),
        mem = human_size(config.memory_bytes),
        cpus = config.cpus,
        pids = config.pids_limit,
        cap = human_size(config.output_cap as u64),
        ws_size = human_size(config.workspace_bytes),
        tmp = human_size(config.tmp_bytes),
        exposures = exposures_text(config),
    );
    let reset = if opts.pool > 0 {
        "Start over in a fresh sandbox: every variable, import, function and class is gone, and \
so are the files in the workspace and /tmp (read-write exposures keep what was copied back to \
the host). Code that is running is interrupted first. Use it for a clean start or when the \
session is in a bad state."
    } else {
        "Start a fresh Python interpreter: every variable, import, function and class is gone; \
files in the workspace and /tmp are kept. Code that is running is interrupted first. Use it for \
a clean start or when the session is in a bad state."
    };
    let annotate = |title: &str, read_only: bool, destructive: bool, idempotent: bool| {
        let mut a = ToolAnnotations::with_title(title).read_only(read_only);
        if !read_only {
            a = a.destructive(destructive).idempotent(idempotent);
        }
        a.open_world(config.network)
    };
    vec![
        Tool::new(
            RUN_PYTHON,
            run_python,
            schema(json!({
                "type": "object",
                "properties": {
                    "code": {
                        "type": "string",
                        "description": "Python source to run in the persistent interpreter, like a notebook cell: statements, then optionally an expression whose value is shown. Uniformly indented code is dedented."
                    },
                    "timeout": {
                        "type": "number",
                        "exclusiveMinimum": 0,
                        "maximum": opts.max_timeout.as_secs_f64(),
                        "description": format!("Time limit of this run in seconds (default {}).", config.timeout.as_secs_f64())
                    }
                },
                "required": ["code"]
            })),
        )
        .with_raw_output_schema(schema(execution_result_schema()))
        .with_annotations(annotate("Run Python", false, false, false)),
        Tool::new(
            RESET_SESSION,
            reset,
            schema(json!({"type": "object", "properties": {}})),
        )
        .with_annotations(annotate("Reset the Python session", false, true, true)),
        Tool::new(
            INTERRUPT,
            "Stop the code that is running now in this session, as Ctrl-C does (KeyboardInterrupt): \
the run_python call in progress returns with that error and the state is kept. Call it while \
another call runs; it does nothing when nothing runs.",
            schema(json!({"type": "object", "properties": {}})),
        )
        .with_annotations(annotate("Interrupt the running code", false, false, true)),
        Tool::new(
            WRITE_FILE,
            format!(
                "Write a file into the sandbox, replacing it if it exists; parent folders are \
created. path: absolute, or relative to {ws}; allowed under {places}; no '..', links are not \
followed. content: text (written as UTF-8), or base64 with encoding \"base64\" for binary data. \
At most {transfer}."
            ),
            schema(json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": format!("Where to write: absolute, or relative to {ws}.")},
                    "content": {"type": "string", "description": "The file's content: text, or base64 when encoding is \"base64\"."},
                    "encoding": {"type": "string", "enum": ["text", "base64"], "default": "text", "description": "How content is given."}
                },
                "required": ["path", "content"]
            })),
        )
        .with_annotations(annotate("Write a file", false, true, true)),
        Tool::new(
            READ_FILE,
            format!(
                "Read a file from the sandbox: under {places}; path absolute or relative to {ws}. \
Text (UTF-8) comes back as text, images (PNG, JPEG, GIF, WebP) as images, other binary data as a \
base64 blob resource; encoding \"base64\" always gives base64 text. At most {transfer}. \
Read-only exposures are read with run_python."
            ),
            schema(json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": format!("The file: absolute, or relative to {ws}.")},
                    "encoding": {"type": "string", "enum": ["auto", "text", "base64"], "default": "auto", "description": "auto: text when the file is UTF-8, else image or blob; text: fail unless UTF-8; base64: always base64."}
                },
                "required": ["path"]
            })),
        )
        .with_annotations(annotate("Read a file", true, false, true)),
        Tool::new(
            LIST_FILES,
            format!(
                "List the names in a folder of the sandbox, sorted: {ws} unless path says \
otherwise; {places} can be listed. Names only: use run_python (os.scandir, pathlib) for sizes and \
types, and for read-only exposures."
            ),
            schema(json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "default": ws, "description": format!("The folder: absolute, or relative to {ws}.")}
                }
            })),
        )
        .with_annotations(annotate("List files", true, false, true)),
        Tool::new(
            SESSION_INFO,
            "What your sandbox is: engine, container, image and the packages it was built with, \
Python version, every limit with how it is enforced (the engine's cgroup, rlimits, the agent, \
or not enforced), the host files exposed and how, and the runs so far. Starts the sandbox if \
nothing has run yet.",
            schema(json!({"type": "object", "properties": {}})),
        )
        .with_annotations(annotate("Sandbox information", true, false, true)),
    ]
}

/// Arguments of `run_python`.
#[derive(Debug, Deserialize)]
pub(crate) struct RunArgs {
    pub(crate) code: String,
    #[serde(default)]
    pub(crate) timeout: Option<f64>,
}

/// Arguments of `write_file`.
#[derive(Debug, Deserialize)]
pub(crate) struct WriteArgs {
    pub(crate) path: String,
    pub(crate) content: String,
    #[serde(default)]
    pub(crate) encoding: Option<String>,
}

/// Arguments of `read_file`.
#[derive(Debug, Deserialize)]
pub(crate) struct ReadArgs {
    pub(crate) path: String,
    #[serde(default)]
    pub(crate) encoding: Option<String>,
}

/// Arguments of `list_files`.
#[derive(Debug, Deserialize)]
pub(crate) struct ListArgs {
    #[serde(default)]
    pub(crate) path: Option<String>,
}

/// The arguments of a call as `T`, or a sentence for the model saying what is wrong.
pub(crate) fn args<T: serde::de::DeserializeOwned>(
    tool: &str,
    arguments: Option<JsonObject>,
    expected: &str,
) -> Result<T, String> {
    let value = Value::Object(arguments.unwrap_or_default());
    serde_json::from_value(value)
        .map_err(|e| format!("invalid arguments for {tool}: {e}; expected {expected}"))
}

/// A sandbox path from what the model gave: relative paths are taken from the
/// workspace; `..`, NUL and empty paths are refused here (the sandbox checks the rest:
/// the allowed places and links).
pub(crate) fn sandbox_path(workspace: &str, path: &str) -> Result<String, String> {
    let path = path.trim();
    if path.is_empty() {
        return Err(
            "the path is empty; give a file name, e.g. data.csv or /workspace/data.csv".into(),
        );
    }
    if path.contains('\0') {
        return Err("the path contains a NUL character".into());
    }
    if path.split('/').any(|part| part == "..") {
        return Err(format!("{path}: '..' is not allowed in paths"));
    }
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        let rel = path.strip_prefix("./").unwrap_or(path);
        format!("{}/{rel}", workspace.trim_end_matches('/'))
    };
    // "/workspace/./a//b/" reads as "/workspace/a/b".
    let parts: Vec<&str> = joined
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    Ok(format!("/{}", parts.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_resolved_from_the_workspace_and_dot_dot_is_refused() {
        assert_eq!(
            sandbox_path("/workspace", "a.txt").unwrap(),
            "/workspace/a.txt"
        );
        assert_eq!(
            sandbox_path("/workspace", "./d/a.txt").unwrap(),
            "/workspace/d/a.txt"
        );
        assert_eq!(
            sandbox_path("/workspace", "/tmp//x/./y").unwrap(),
            "/tmp/x/y"
        );
        assert_eq!(sandbox_path("/workspace/", "/").unwrap(), "/");
        assert!(sandbox_path("/workspace", "../etc/passwd").is_err());
        assert!(sandbox_path("/workspace", "/workspace/../etc").is_err());
        assert!(sandbox_path("/workspace", "").is_err());
        assert!(sandbox_path("/workspace", "a\0b").is_err());
    }

    #[test]
    fn sizes_and_times_read_well() {
        assert_eq!(human_size(512 << 20), "512 MiB");
        assert_eq!(human_size(3 << 29), "1.5 GiB");
        assert_eq!(human_size(100), "100 bytes");
        assert_eq!(human_secs(std::time::Duration::from_secs(30)), "30 s");
        assert_eq!(human_secs(std::time::Duration::from_millis(1500)), "1.5 s");
    }

    #[test]
    fn every_tool_has_a_description_and_an_object_schema_with_described_properties() {
        let mut config = SandboxConfig::default();
        for (container, mode) in [
            ("/data/out", ExposureMode::ReadWrite),
            ("/data/in.csv", ExposureMode::ReadOnly),
        ] {
            config.exposures.push(biocage_core::Exposure {
                host: "/nowhere".into(),
                container: container.into(),
                mode,
            });
        }
        let tools = list(&config, &ServerOptions::default(), "docker");
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        assert_eq!(
            names,
            [
                RUN_PYTHON,
                RESET_SESSION,
                INTERRUPT,
                WRITE_FILE,
                READ_FILE,
                LIST_FILES,
                SESSION_INFO
            ]
        );
        for tool in &tools {
            let description = tool.description.as_deref().unwrap_or_default();
            assert!(description.len() > 80, "{}: {description}", tool.name);
            assert_eq!(tool.input_schema["type"], "object", "{}", tool.name);
            if let Some(Value::Object(props)) = tool.input_schema.get("properties") {
                for (name, prop) in props {
                    assert!(prop.get("description").is_some(), "{}.{name}", tool.name);
                }
            }
        }
        let run = &tools[0];
        let text = run.description.as_deref().unwrap_or_default();
        for needle in [
            "NO network",
            "512 MiB",
            "30 s",
            "/workspace",
            "/data/out (read-write",
            "/data/in.csv (read-only)",
            "STATE LOST",
        ] {
            assert!(text.contains(needle), "{needle} missing from: {text}");
        }
        let write = tools[3].description.as_deref().unwrap_or_default();
        assert!(write.contains("/workspace, /tmp, /data/out"), "{write}");
    }

    #[test]
    fn bad_arguments_say_what_is_expected() {
        let mut args_map = JsonObject::new();
        args_map.insert("timeout".into(), json!(3));
        let e = args::<RunArgs>(RUN_PYTHON, Some(args_map), "{\"code\": \"...\"}").unwrap_err();
        assert!(e.contains("code") && e.contains("expected"), "{e}");
        let mut ok = JsonObject::new();
        ok.insert("code".into(), json!("1"));
        ok.insert("extra".into(), json!(true));
        let parsed = args::<RunArgs>(RUN_PYTHON, Some(ok), "").unwrap();
        assert_eq!(parsed.code, "1");
    }
}
