//! The MCP handler of one client connection: the tools, run in that connection's
//! sandbox.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use biocage_core::{ExposureMode, RunEvent, RunOptions, SessionInfo};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ProgressToken,
    ProtocolVersion, ResourceContents, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::json;

use crate::render::{self, failure};
use crate::sandbox::{Registry, SandboxCell, Shared};
use crate::tools::{self, human_size};
use crate::Backend;

/// Most characters of one progress notification's message.
const PROGRESS_MESSAGE_CAP: usize = 16 << 10;

/// One client connection: its sandbox and the tools that use it.
pub(crate) struct Connection {
    backend: Arc<Backend>,
    cell: Arc<SandboxCell>,
    /// HTTP: where MCP sessions find their sandboxes.
    registry: Option<Arc<Registry>>,
    versions: Cow<'static, [ProtocolVersion]>,
}

impl Connection {
    /// A connection over stdio: every protocol version this SDK knows.
    pub(crate) fn stdio(backend: Arc<Backend>) -> Self {
        let cell = Arc::new(SandboxCell::new(backend.clone()));
        Connection {
            backend,
            cell,
            registry: None,
            versions: Cow::Borrowed(ProtocolVersion::KNOWN_VERSIONS),
        }
    }

    /// A connection over HTTP: the session-based protocol versions (a sandbox belongs
    /// to an MCP session, which later revisions no longer have).
    pub(crate) fn http(backend: Arc<Backend>, registry: Arc<Registry>) -> Self {
        let cell = Arc::new(SandboxCell::new(backend.clone()));
        registry.add(&cell);
        Connection {
            backend,
            cell,
            registry: Some(registry),
            versions: Cow::Borrowed(ProtocolVersion::known_up_to(
                &ProtocolVersion::LATEST_WITH_INITIALIZE,
            )),
        }
    }

    /// The connection's sandbox.
    pub(crate) fn cell(&self) -> Arc<SandboxCell> {
        self.cell.clone()
    }

    async fn session(&self) -> Result<Shared, CallToolResult> {
        self.cell.session().await.map_err(failure)
    }

    async fn run_python(
        &self,
        args: tools::RunArgs,
        context: &RequestContext<RoleServer>,
    ) -> CallToolResult {
        let config = &self.backend.config;
        let timeout = match args.timeout {
            None => config.timeout,
            Some(t)
                if t.is_finite() && t > 0.0 && t <= self.backend.opts.max_timeout.as_secs_f64() =>
            {
                Duration::from_secs_f64(t)
            }
            Some(t) => {
                return failure(format!(
                    "timeout {t} is not allowed: give seconds above 0 and at most {}",
                    self.backend.opts.max_timeout.as_secs_f64()
                ))
            }
        };
        let session = match self.session().await {
            Ok(s) => s,
            Err(e) => return e,
        };
        let _running = self.cell.running();
        let opts = RunOptions::default().timeout(timeout);
        let progress = context.meta.get_progress_token();
        let outcome = match &progress {
            None => {
                tokio::select! {
                    r = session.run_with(&args.code, &opts) => Some(r),
                    () = context.ct.cancelled() => None,
                }
            }
            Some(token) => {
                let (tx, mut rx) = tokio::sync::mpsc::channel::<RunEvent>(256);
                let run = session.run_streaming(&args.code, &opts, tx);
                tokio::pin!(run);
                let mut sent = 0u32;
                let outcome = loop {
                    tokio::select! {
                        r = &mut run => break Some(r),
                        Some(event) = rx.recv() => {
                            send_progress(context, token, &mut sent, event, &mut rx).await;
                        }
                        () = context.ct.cancelled() => break None,
                    }
                };
                if outcome.is_some() {
                    while let Ok(event) = rx.try_recv() {
                        send_progress(context, token, &mut sent, event, &mut rx).await;
                    }
                }
                outcome
            }
        };
        match outcome {
            Some(Ok(result)) => render::run_result(&result, timeout, config),
            Some(Err(e)) => failure(format!("The run could not be done: {e}")),
            // Dropping the run interrupts it; the session stays usable.
            None => failure("The run was cancelled before it finished (by the client, or because the connection or the server is closing); the code was interrupted."),
        }
    }

    async fn reset_session(&self) -> CallToolResult {
        match self.cell.reset().await {
            Ok(message) => render::text(message),
            Err(message) => failure(message),
        }
    }

    async fn interrupt(&self) -> CallToolResult {
        let Some(session) = self.cell.peek() else {
            return render::text("Nothing is running (no code has run in this session yet).");
        };
        if !self.cell.is_running() {
            return render::text("Nothing is running.");
        }
        match session.interrupt().await {
            Ok(()) => render::text("Interrupted: the running code got KeyboardInterrupt; its run_python call returns with that error and the state is kept."),
            Err(e) => failure(format!("The interrupt could not be delivered: {e}")),
        }
    }

    /// Where a path lands, said for the model when it is a read-write exposure.
    fn exposure_note(&self, path: &str) -> String {
        self.backend
            .config
            .exposures
            .iter()
            .filter(|e| e.mode == ExposureMode::ReadWrite)
            .find(|e| path == e.container || path.starts_with(&format!("{}/", e.container.trim_end_matches('/'))))
            .map(|_| " It is copied back to the host after the next run_python call (or when the session ends).".to_string())
            .unwrap_or_default()
    }

    async fn write_file(&self, args: tools::WriteArgs) -> CallToolResult {
        let path = match tools::sandbox_path(&self.backend.config.workspace, &args.path) {
            Ok(p) => p,
            Err(e) => return failure(e),
        };
        let data = match args.encoding.as_deref().unwrap_or("text") {
            "text" => args.content.into_bytes(),
            "base64" => match BASE64.decode(args.content.trim()) {
                Ok(d) => d,
                Err(e) => return failure(format!("content is not valid base64: {e}")),
            },
            other => {
                return failure(format!(
                    "encoding {other:?} is not known: use \"text\" or \"base64\""
                ))
            }
        };
        let session = match self.session().await {
            Ok(s) => s,
            Err(e) => return e,
        };
        match session.write_file(&path, &data).await {
            Ok(()) => render::text(format!(
                "Wrote {} to {path}.{}",
                plural_bytes(data.len()),
                self.exposure_note(&path)
            )),
            Err(e) => failure(format!("Could not write {path}: {e}")),
        }
    }

    async fn read_file(&self, args: tools::ReadArgs) -> CallToolResult {
        let path = match tools::sandbox_path(&self.backend.config.workspace, &args.path) {
            Ok(p) => p,
            Err(e) => return failure(e),
        };
        let encoding = args.encoding.as_deref().unwrap_or("auto");
        if !matches!(encoding, "auto" | "text" | "base64") {
            return failure(format!(
                "encoding {encoding:?} is not known: use \"auto\", \"text\" or \"base64\""
            ));
        }
        let session = match self.session().await {
            Ok(s) => s,
            Err(e) => return e,
        };
        let data = match session.read_file(&path).await {
            Ok(d) => d,
            Err(e) => return failure(format!("Could not read {path}: {e}")),
        };
        let size = data.len();
        if encoding == "base64" {
            return render::text(BASE64.encode(&data));
        }
        match String::from_utf8(data) {
            Ok(text) => render::text(text),
            Err(_) if encoding == "text" => failure(format!(
                "{path} is not UTF-8 text ({}); read it with encoding \"base64\"",
                plural_bytes(size)
            )),
            Err(e) => {
                let data = e.into_bytes();
                let b64 = BASE64.encode(&data);
                let uri = format!("biocage://sandbox{path}");
                match image_mime(&data) {
                    Some(mime) => CallToolResult::success(vec![
                        ContentBlock::text(format!("{path}: {mime}, {}.", plural_bytes(size))),
                        ContentBlock::image(b64, mime),
                    ]),
                    None => CallToolResult::success(vec![
                        ContentBlock::text(format!(
                            "{path}: binary data, {}, sent as a base64 blob resource.",
                            plural_bytes(size)
                        )),
                        ContentBlock::resource(
                            ResourceContents::blob(b64, uri)
                                .with_mime_type("application/octet-stream"),
                        ),
                    ]),
                }
            }
        }
    }

    async fn list_files(&self, args: tools::ListArgs) -> CallToolResult {
        let workspace = &self.backend.config.workspace;
        let path = match tools::sandbox_path(workspace, args.path.as_deref().unwrap_or(workspace)) {
            Ok(p) => p,
            Err(e) => return failure(e),
        };
        let session = match self.session().await {
            Ok(s) => s,
            Err(e) => return e,
        };
        match session.list_dir(&path).await {
            Ok(names) => {
                let text = if names.is_empty() {
                    format!("{path} is empty.")
                } else {
                    format!(
                        "{} in {path}:\n{}",
                        plural(names.len(), "entry", "entries"),
                        names.join("\n")
                    )
                };
                let mut result = render::text(text);
                result.structured_content = Some(json!({"path": path, "names": names}));
                result
            }
            Err(e) => failure(format!("Could not list {path}: {e}")),
        }
    }

    async fn session_info(&self) -> CallToolResult {
        let session = match self.session().await {
            Ok(s) => s,
            Err(e) => return e,
        };
        match session.info().await {
            Ok(info) => {
                let mut result = render::text(info_text(&info, &self.backend));
                result.structured_content = serde_json::to_value(&info).ok();
                result
            }
            Err(e) => failure(format!("The sandbox could not be inspected: {e}")),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if self.cell.is_live() {
            let cell = self.cell.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { cell.close().await });
            }
        }
    }
}

/// Sends what a run produced as one progress notification (with whatever else is
/// already queued), numbered from 1.
async fn send_progress(
    context: &RequestContext<RoleServer>,
    token: &ProgressToken,
    sent: &mut u32,
    first: RunEvent,
    more: &mut tokio::sync::mpsc::Receiver<RunEvent>,
) {
    let mut message = String::new();
    let mut add = |event: RunEvent| match event {
        RunEvent::Stdout(text) => message.push_str(&text),
        RunEvent::Stderr(text) => {
            message.push_str("[stderr] ");
            message.push_str(&text);
        }
        RunEvent::Display(bundle) => {
            message.push_str("[display] ");
            message.push_str(bundle.get("text/plain").map(String::as_str).unwrap_or(""));
            message.push('\n');
        }
        _ => {}
    };
    add(first);
    while let Ok(event) = more.try_recv() {
        add(event);
    }
    if message.is_empty() {
        return;
    }
    if message.chars().count() > PROGRESS_MESSAGE_CAP {
        message = message.chars().take(PROGRESS_MESSAGE_CAP).collect();
        message.push_str("\n[... cut; the result has all of it]");
    }
    *sent += 1;
    let param =
        ProgressNotificationParam::new(token.clone(), f64::from(*sent)).with_message(message);
    if let Err(e) = context.peer.notify_progress(param).await {
        tracing::debug!("a progress notification could not be sent: {e}");
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

fn plural_bytes(n: usize) -> String {
    plural(n, "byte", "bytes")
}

/// The image type of `data`, from its first bytes (the name's ending is not trusted).
fn image_mime(data: &[u8]) -> Option<&'static str> {
    if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if data.starts_with(b"\xff\xd8\xff") {
        Some("image/jpeg")
    } else if data.starts_with(b"GIF87a") || data.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if data.len() > 12 && &data[..4] == b"RIFF" && &data[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

/// `session_info` for a model to read.
fn info_text(info: &SessionInfo, backend: &Backend) -> String {
    let config = &backend.config;
    let mut out = format!(
        "Engine {engine}; container {name} ({id}), {state}; image {image}.\nPython {python}, user {user}; {runs} so far.\n",
        engine = info.runtime,
        name = info.container_name,
        id = info.container_id.chars().take(12).collect::<String>(),
        state = if info.is_running { "running" } else { "not running" },
        image = info.image,
        python = info.python_version,
        user = info.user,
        runs = plural(usize::try_from(info.runs).unwrap_or(usize::MAX), "run", "runs"),
    );
    out.push_str("Limits (value: who enforces it, how):\n");
    for l in &info.limits {
        let who = serde_json::to_value(l.enforcement)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_else(|| "unknown".into());
        out.push_str(&format!(
            "- {} {}: {who}, {}\n",
            l.name, l.value, l.mechanism
        ));
    }
    out.push_str(&format!(
        "- time per run: {} by default, up to {} on request\n- output: {} per stream; file transfers: {}\n",
        tools::human_secs(config.timeout),
        tools::human_secs(backend.opts.max_timeout),
        human_size(config.output_cap as u64),
        human_size(config.max_transfer_bytes),
    ));
    out.push_str(&format!(
        "Writable: {} ({}), /tmp ({}); network {}.\n",
        config.workspace,
        human_size(config.workspace_bytes),
        human_size(config.tmp_bytes),
        if config.network { "on" } else { "off" }
    ));
    if info.exposed_paths.is_empty() {
        out.push_str("No host files are exposed.\n");
    } else {
        out.push_str("Exposed host paths:\n");
        for e in &info.exposed_paths {
            let mode = match e.mode {
                ExposureMode::ReadOnly => "read-only",
                ExposureMode::ReadWrite => "read-write, copied back to the host after each run",
            };
            out.push_str(&format!("- {} ({mode})\n", e.container));
        }
    }
    if !info.image_packages.is_empty() {
        let pkgs: Vec<String> = info
            .image_packages
            .iter()
            .map(|(name, version)| format!("{name} {version}"))
            .collect();
        out.push_str(&format!(
            "Packages the image was built with: {}.\n",
            pkgs.join(", ")
        ));
    }
    out
}

impl ServerHandler for Connection {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(
                Implementation::new("biocage", env!("CARGO_PKG_VERSION"))
                    .with_title("BioCage: a persistent, sandboxed Python interpreter"),
            )
            .with_instructions(self.backend.instructions.clone())
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        self.versions.clone()
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(self.backend.tools.clone()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.backend.tools.iter().find(|t| t.name == name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        if let Some(registry) = &self.registry {
            let id = context
                .extensions
                .get::<axum::http::request::Parts>()
                .and_then(|parts| parts.headers.get("mcp-session-id"))
                .and_then(|v| v.to_str().ok());
            if let Some(id) = id {
                registry.bind(id, &self.cell);
            }
        }
        let name = request.name.as_ref();
        let arguments = request.arguments;
        let result = match name {
            tools::RUN_PYTHON => {
                match tools::args::<tools::RunArgs>(
                    name,
                    arguments,
                    "{\"code\": \"print(1)\", \"timeout\": 30}",
                ) {
                    Ok(args) => self.run_python(args, &context).await,
                    Err(e) => failure(e),
                }
            }
            tools::RESET_SESSION => self.reset_session().await,
            tools::INTERRUPT => self.interrupt().await,
            tools::WRITE_FILE => {
                match tools::args::<tools::WriteArgs>(
                    name,
                    arguments,
                    "{\"path\": \"data.csv\", \"content\": \"a,b\\n1,2\\n\"}",
                ) {
                    Ok(args) => self.write_file(args).await,
                    Err(e) => failure(e),
                }
            }
            tools::READ_FILE => {
                match tools::args::<tools::ReadArgs>(name, arguments, "{\"path\": \"out.csv\"}") {
                    Ok(args) => self.read_file(args).await,
                    Err(e) => failure(e),
                }
            }
            tools::LIST_FILES => {
                match tools::args::<tools::ListArgs>(name, arguments, "{\"path\": \"/workspace\"}")
                {
                    Ok(args) => self.list_files(args).await,
                    Err(e) => failure(e),
                }
            }
            tools::SESSION_INFO => self.session_info().await,
            other => {
                return Err(McpError::invalid_params(
                    format!(
                        "unknown tool {other:?}; the tools are {}",
                        self.backend
                            .tools
                            .iter()
                            .map(|t| t.name.as_ref())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    None,
                ))
            }
        };
        Ok(result.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_known_by_their_bytes() {
        assert_eq!(image_mime(b"\x89PNG\r\n\x1a\nrest"), Some("image/png"));
        assert_eq!(image_mime(b"not a png"), None);
        assert_eq!(image_mime(b"GIF89a..."), Some("image/gif"));
        assert_eq!(image_mime(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
    }

    #[test]
    fn counts_read_well() {
        assert_eq!(plural_bytes(1), "1 byte");
        assert_eq!(plural(3, "entry", "entries"), "3 entries");
    }
}
