//! The agent's protocol, typed: what the host sends to the in-container supervisor
//! ([`Request`]) and what the supervisor sends back ([`Message`]). One JSON object per
//! line each way, tagged by its `"op"` and carrying the id of the request it belongs to
//! ([`Envelope`]). The wire format is the agent's own (`agent/biocage_agent.py`, its
//! `handle_request`, `file_op`, `sync_op` and the results it builds); these types name
//! it and add nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::result::ExecutionResult;
use crate::runtime::InputStatus;

/// A message on the wire: the id of the request it belongs to, then the message itself
/// (its fields side by side with `"id"`, which the agent puts first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// The request's id; null in the agent's complaints about request lines it could
    /// not read, and in its hello.
    #[serde(default)]
    pub id: Option<u64>,
    /// The request or message.
    #[serde(flatten)]
    pub body: T,
}

/// A request from the host to the supervisor.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Request {
    /// Runs code in the worker interpreter; answered by [`Message::Result`] (or an
    /// [`Message::Error`] when the run cannot start), with [`Message::Output`] and
    /// [`Message::Display`] events before it when `stream` is set.
    Run {
        /// The code.
        code: String,
        /// The run's time limit, in seconds.
        timeout: f64,
        /// Run as a script (`python PATH ARGV...`).
        #[serde(skip_serializing_if = "Option::is_none")]
        script: Option<Script>,
        /// The file name tracebacks show for the code.
        #[serde(skip_serializing_if = "Option::is_none")]
        filename: Option<String>,
        /// Send output and displays as they come.
        #[serde(skip_serializing_if = "is_false")]
        stream: bool,
    },
    /// Interrupts the run in progress, if any (SIGINT, then a kill after the grace).
    Interrupt,
    /// Replaces the worker: a fresh interpreter, earlier state gone. The reply's `pid`
    /// is the new worker's.
    Restart,
    /// Asks whether the supervisor is alive; the reply's `busy` says whether a run goes on.
    Ping,
    /// Kills every sandbox process and ends the supervisor.
    Close,
    /// Whether `code` is a whole statement at an interactive prompt (reply's `status`).
    IsComplete {
        /// The code typed so far.
        code: String,
    },
    /// Tab completions of `text` in the worker's namespace (reply's `matches`).
    Complete {
        /// The text before the cursor.
        text: String,
    },
    /// Writes a file in the sandbox (reply's `size`: bytes written).
    WriteFile {
        /// Where.
        #[serde(flatten)]
        path: FilePath,
        /// The bytes, base64.
        data: String,
        /// Where in the file; from 0 the file is truncated first.
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        /// Permission bits of a new file.
        #[serde(skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
    },
    /// Makes a folder in the sandbox.
    MakeDir {
        /// Where.
        #[serde(flatten)]
        path: FilePath,
        /// Its permission bits.
        mode: u32,
    },
    /// Reads (part of) a file in the sandbox (reply's `data`, base64).
    ReadFile {
        /// Where.
        #[serde(flatten)]
        path: FilePath,
        /// From where in the file.
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        /// How many bytes at most (all the rest if absent).
        #[serde(skip_serializing_if = "Option::is_none")]
        length: Option<u64>,
        /// Refused when more than this many bytes would be sent.
        max_bytes: u64,
    },
    /// The names in a folder of the sandbox (reply's `names`).
    ListDir {
        /// Where.
        #[serde(flatten)]
        path: FilePath,
    },
    /// Starts tracking changes below the read-write exposures' roots.
    SyncBegin {
        /// The roots, in the sandbox; changes name them by index.
        roots: Vec<String>,
        /// Most entries a scan visits.
        max_entries: u32,
        /// Deepest folder a scan enters.
        max_depth: u32,
        /// Longest relative path a scan reports, in bytes.
        max_path: usize,
    },
    /// One page of what changed since the last scan (reply's `changes`, `more`, notes).
    Sync {
        /// The rest of the last scan rather than a new one.
        next: bool,
        /// Most changes in the page.
        page: usize,
    },
    /// Entries the host could not copy back: reported as changed again next time.
    SyncForget {
        /// The entries.
        paths: Vec<ChangedPath>,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A script to run: its path in the sandbox and its arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Script {
    /// The script's path.
    pub path: String,
    /// `sys.argv[1:]`.
    pub argv: Vec<String>,
}

/// A path in the sandbox, as text or as the base64 of its bytes (names that are not
/// UTF-8 stay exact); on the wire the field `"path"` or `"p64"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilePath {
    /// A path as text.
    Path(String),
    /// A path as the base64 of its bytes.
    P64(String),
}

/// An entry of a read-write exposure: its root's index and its path below it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedPath {
    /// Index of the root in [`Request::SyncBegin`]'s `roots`.
    pub root: u64,
    /// The path below the root, base64 of its bytes.
    pub p64: String,
}

/// A line from the supervisor: the reply to a request, an event of a streamed run, or
/// its hello.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Message {
    /// The first line of a new supervisor.
    Hello(Hello),
    /// The result of a run.
    Result(Box<ExecutionResult>),
    /// A request other than a run was done.
    Ok(Box<Reply>),
    /// A request was refused or failed.
    Error {
        /// What went wrong.
        message: String,
    },
    /// Output of a streamed run.
    Output {
        /// Which stream.
        stream: OutputStream,
        /// The text.
        data: String,
    },
    /// A `display(obj)` call of a streamed run: MIME type to data.
    Display {
        /// The forms of the object.
        bundle: BTreeMap<String, String>,
    },
    /// An op this host does not know (from a newer agent): ignored.
    #[serde(other)]
    Unknown,
}

impl Message {
    /// The message's `"op"` on the wire.
    pub fn op(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Result(_) => "result",
            Message::Ok(_) => "ok",
            Message::Error { .. } => "error",
            Message::Output { .. } => "output",
            Message::Display { .. } => "display",
            Message::Unknown => "unknown",
        }
    }
}

/// Which stream output was written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// fd 1.
    Stdout,
    /// fd 2.
    Stderr,
}

/// What a new supervisor says first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Version of the protocol it speaks (the session refuses a hello without the
    /// version it expects; the channel takes any).
    #[serde(default)]
    pub agent_version: Option<u64>,
    /// Its Python's version ("3.12.1").
    #[serde(default)]
    pub python: String,
    /// The supervisor's pid.
    #[serde(default)]
    pub pid: Option<i64>,
    /// The worker's pid.
    #[serde(default)]
    pub worker_pid: Option<i64>,
    /// The rlimits it applies to the worker, as configured.
    #[serde(default)]
    pub rlimits: serde_json::Value,
    /// Whether it can tell out-of-memory kills (the cgroup's counter is readable).
    #[serde(default)]
    pub oom_counter: bool,
    /// Its seccomp filter is in place.
    #[serde(default)]
    pub seccomp: bool,
    /// no_new_privs is set.
    #[serde(default)]
    pub no_new_privs: bool,
    /// The supervisor runs under a uid of its own, apart from the sandbox user.
    #[serde(default)]
    pub privilege_separated: bool,
}

/// What an `"ok"` reply holds: the fields of the request it answers, the others absent.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Reply {
    /// [`Request::Ping`]: whether a run is in progress.
    #[serde(default)]
    pub busy: Option<bool>,
    /// [`Request::Restart`]: the new worker's pid.
    #[serde(default)]
    pub pid: Option<i64>,
    /// [`Request::IsComplete`]: the verdict.
    #[serde(default)]
    pub status: Option<InputStatus>,
    /// [`Request::Complete`]: the completions.
    #[serde(default)]
    pub matches: Vec<String>,
    /// [`Request::WriteFile`]: bytes written.
    #[serde(default)]
    pub size: Option<u64>,
    /// [`Request::ReadFile`]: the bytes, base64.
    #[serde(default)]
    pub data: Option<String>,
    /// [`Request::ListDir`]: the names, sorted.
    #[serde(default)]
    pub names: Vec<String>,
    /// [`Request::Sync`]: the changes in this page.
    #[serde(default)]
    pub changes: Vec<Change>,
    /// [`Request::Sync`]: more changes follow.
    #[serde(default)]
    pub more: bool,
    /// [`Request::Sync`] (a new scan): links and special files left out.
    #[serde(default)]
    pub skipped: u64,
    /// [`Request::Sync`] (a new scan): folders too deep, left out.
    #[serde(default)]
    pub too_deep: u64,
    /// [`Request::Sync`] (a new scan): paths too long, left out.
    #[serde(default)]
    pub too_long: u64,
    /// [`Request::Sync`] (a new scan): the entry cap was reached.
    #[serde(default)]
    pub too_many: bool,
}

/// A change below a read-write exposure.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Change {
    /// What changed.
    pub kind: ChangeKind,
    /// Where.
    #[serde(flatten)]
    pub path: ChangedPath,
    /// A file's size.
    #[serde(default)]
    pub size: u64,
    /// A file's permission bits.
    #[serde(default)]
    pub mode: Option<u64>,
}

/// What happened to an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// A folder appeared.
    Dir,
    /// A file appeared or changed.
    File,
    /// The entry is gone.
    Gone,
    /// A kind this host does not know: not copied back.
    #[serde(other)]
    Unknown,
}

/// Why a line from the supervisor could not be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed message from the sandbox supervisor: {0}")]
pub struct Malformed(pub String);

/// What a line from the supervisor says, once read.
#[derive(Debug)]
pub enum Incoming {
    /// A message.
    Message(Envelope<Message>),
    /// A JSON object that is not a message of this protocol, with what can be told of
    /// it: the id and op it gives, and why it does not fit.
    Malformed {
        /// Its `"id"`, if it has one.
        id: Option<u64>,
        /// Its `"op"`, if it has one.
        op: Option<String>,
        /// Why it does not fit.
        error: Malformed,
    },
}

/// Reads one line from the supervisor.
pub fn parse_line(line: &str) -> Result<Incoming, Malformed> {
    match serde_json::from_str::<Envelope<Message>>(line) {
        Ok(msg) => Ok(Incoming::Message(msg)),
        Err(error) => {
            #[derive(Deserialize)]
            struct Head {
                #[serde(default)]
                id: Option<u64>,
                #[serde(default)]
                op: Option<String>,
            }
            // Not even an object with a numeric id and a string op: not attributable.
            let head: Head = serde_json::from_str(line).map_err(|e| Malformed(e.to_string()))?;
            Ok(Incoming::Malformed {
                id: head.id,
                op: head.op,
                error: Malformed(error.to_string()),
            })
        }
    }
}

/// One request line (without its newline): `{"id":ID,"op":...}`.
pub fn encode_request<R: Serialize + ?Sized>(id: u64, body: &R) -> Result<String, Malformed> {
    serde_json::to_string(&Envelope { id: Some(id), body }).map_err(|e| Malformed(e.to_string()))
}

/// The supervisor's configuration, the last argument of its command line (JSON). The
/// agent reads each field with a default, so fields may be left out by old hosts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentConfig {
    /// Most bytes kept of each output stream of a run.
    pub output_cap: usize,
    /// Time limit of a run that names none, in seconds.
    pub timeout: f64,
    /// Time a run has to stop after an interrupt before it is killed, in seconds.
    pub interrupt_grace: f64,
    /// rlimits applied to the worker (name without RLIMIT_, lowercase).
    pub rlimits: BTreeMap<String, u64>,
    /// Whether open matplotlib figures become images of the result.
    pub capture_figures: bool,
    /// The worker's working directory.
    pub workdir: String,
    /// The folders file transfers may reach.
    pub file_roots: Vec<String>,
    /// The sandbox's process limit (the agent culls leftovers near it).
    pub pids_limit: u32,
    /// Most characters of a result's value.
    pub value_cap: usize,
    /// Most characters of an error message.
    pub message_cap: usize,
    /// Most characters of a traceback.
    pub traceback_cap: usize,
    /// Most figures in a result.
    pub max_images: usize,
    /// Most bytes of figures in a result.
    pub max_image_bytes: usize,
    /// Most pixels rendered for a result's figures.
    pub max_image_pixels: u64,
    /// Most displays in a result.
    pub max_displays: usize,
    /// Most characters of all displays of a result.
    pub max_display_bytes: usize,
    /// Longest code a run takes, in bytes.
    pub max_code_bytes: usize,
    /// Longest request line the agent reads.
    pub request_cap: usize,
    /// Syscalls the agent's seccomp filter denies besides its own list.
    pub deny_syscalls: Vec<String>,
    /// The worker's umask (the agent keeps its own when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub umask: Option<u32>,
    /// The supervisor's own uid (privilege separation), when the container starts as
    /// root with the agent's capabilities.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_uid: Option<u32>,
    /// The sandbox user's uid, which user code runs as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox_uid: Option<u32>,
    /// The sandbox user's gid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox_gid: Option<u32>,
    /// Folders the supervisor gives to the sandbox user before it drops root (tmpfs
    /// mounts an engine made root's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub own_paths: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn wire(req: &Request) -> Value {
        serde_json::from_str(&encode_request(7, req).unwrap()).unwrap()
    }

    #[test]
    fn requests_are_the_objects_the_agent_reads() {
        assert_eq!(
            encode_request(3, &Request::Ping).unwrap(),
            r#"{"id":3,"op":"ping"}"#
        );
        assert_eq!(
            wire(&Request::Run {
                code: "1".into(),
                timeout: 2.5,
                script: None,
                filename: None,
                stream: false
            }),
            json!({"id": 7, "op": "run", "code": "1", "timeout": 2.5})
        );
        assert_eq!(
            wire(&Request::Run {
                code: "".into(),
                timeout: 1.0,
                script: Some(Script {
                    path: "/w/s.py".into(),
                    argv: vec!["a".into()]
                }),
                filename: Some("/w/s.py".into()),
                stream: true
            }),
            json!({"id": 7, "op": "run", "code": "", "timeout": 1.0, "stream": true,
                   "script": {"path": "/w/s.py", "argv": ["a"]}, "filename": "/w/s.py"})
        );
        assert_eq!(
            wire(&Request::IsComplete { code: "x".into() }),
            json!({"id": 7, "op": "is_complete", "code": "x"})
        );
        assert_eq!(
            wire(&Request::WriteFile {
                path: FilePath::P64("L3c=".into()),
                data: "YQ==".into(),
                offset: Some(0),
                mode: Some(0o644)
            }),
            json!({"id": 7, "op": "write_file", "p64": "L3c=", "data": "YQ==", "offset": 0, "mode": 420})
        );
        assert_eq!(
            wire(&Request::ReadFile {
                path: FilePath::Path("/w/a".into()),
                offset: None,
                length: None,
                max_bytes: 9
            }),
            json!({"id": 7, "op": "read_file", "path": "/w/a", "max_bytes": 9})
        );
        assert_eq!(
            wire(&Request::MakeDir {
                path: FilePath::P64("eA==".into()),
                mode: 0o700
            }),
            json!({"id": 7, "op": "make_dir", "p64": "eA==", "mode": 448})
        );
        assert_eq!(
            wire(&Request::ListDir {
                path: FilePath::Path("/w".into())
            }),
            json!({"id": 7, "op": "list_dir", "path": "/w"})
        );
        assert_eq!(
            wire(&Request::SyncBegin {
                roots: vec!["/rw".into()],
                max_entries: 5,
                max_depth: 6,
                max_path: 7
            }),
            json!({"id": 7, "op": "sync_begin", "roots": ["/rw"], "max_entries": 5,
                   "max_depth": 6, "max_path": 7})
        );
        assert_eq!(
            wire(&Request::Sync {
                next: true,
                page: 2
            }),
            json!({"id": 7, "op": "sync", "next": true, "page": 2})
        );
        assert_eq!(
            wire(&Request::SyncForget {
                paths: vec![ChangedPath {
                    root: 0,
                    p64: "eA==".into()
                }]
            }),
            json!({"id": 7, "op": "sync_forget", "paths": [{"root": 0, "p64": "eA=="}]})
        );
        for (req, op) in [
            (Request::Interrupt, "interrupt"),
            (Request::Restart, "restart"),
            (Request::Close, "close"),
        ] {
            assert_eq!(wire(&req), json!({"id": 7, "op": op}));
        }
    }

    fn parsed(line: &str) -> (Option<u64>, Message) {
        match parse_line(line).unwrap() {
            Incoming::Message(m) => (m.id, m.body),
            Incoming::Malformed { error, .. } => panic!("{line}: {error}"),
        }
    }

    #[test]
    fn messages_are_read_with_their_id() {
        let (id, msg) = parsed(
            r#"{"id":null,"op":"hello","agent_version":2,"python":"3.12.1","pid":9,"worker_pid":10,"rlimits":{},"oom_counter":false,"no_new_privs":true,"seccomp":true}"#,
        );
        assert_eq!(id, None);
        let Message::Hello(h) = msg else {
            panic!("{msg:?}")
        };
        assert_eq!((h.agent_version, h.python.as_str()), (Some(2), "3.12.1"));
        assert!(h.seccomp && h.no_new_privs);
        let (id, msg) = parsed(r#"{"id":4,"op":"ok","busy":false}"#);
        assert_eq!(id, Some(4));
        assert_eq!(
            msg,
            Message::Ok(Box::new(Reply {
                busy: Some(false),
                ..Reply::default()
            }))
        );
        let (_, msg) = parsed(
            r#"{"id":4,"op":"ok","changes":[{"kind":"file","root":0,"p64":"eA==","size":3,"mode":420},{"kind":"odd","root":1,"p64":""}],"more":true,"skipped":2}"#,
        );
        let Message::Ok(reply) = msg else {
            panic!("{msg:?}")
        };
        assert_eq!(reply.changes.len(), 2);
        assert_eq!(reply.changes[0].kind, ChangeKind::File);
        assert_eq!(reply.changes[0].path.p64, "eA==");
        assert_eq!(reply.changes[1].kind, ChangeKind::Unknown);
        assert!(reply.more && reply.skipped == 2 && !reply.too_many);
        let (_, msg) = parsed(r#"{"id":5,"op":"output","stream":"stderr","data":"x"}"#);
        assert_eq!(
            msg,
            Message::Output {
                stream: OutputStream::Stderr,
                data: "x".into()
            }
        );
        let (_, msg) = parsed(r#"{"id":5,"op":"error","message":"no"}"#);
        assert_eq!(
            msg,
            Message::Error {
                message: "no".into()
            }
        );
        let (_, msg) = parsed(
            r#"{"id":6,"op":"result","stdout":"","stderr":"","stdout_truncated":false,"stderr_truncated":false,"execution_time":0.5,"state_lost":false,"success":true,"exit_code":0,"error":null,"value":"42"}"#,
        );
        let Message::Result(r) = msg else {
            panic!("{msg:?}")
        };
        assert_eq!(r.value.as_deref(), Some("42"));
    }

    #[test]
    fn unknown_ops_are_read_and_malformed_messages_keep_their_id() {
        assert_eq!(
            parsed(r#"{"id":1,"op":"shiny","x":[1]}"#).1,
            Message::Unknown
        );
        match parse_line(r#"{"id":8,"op":"result","success":"yes"}"#).unwrap() {
            Incoming::Malformed { id, op, .. } => {
                assert_eq!((id, op.as_deref()), (Some(8), Some("result")))
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_line("not json").is_err());
        assert!(parse_line(r#"{"id":"x","op":"ok"}"#).is_err());
    }

    /// The agent's table of exit codes and error kinds (between its "# -- results
    /// table" marks) is the host's: the same EXIT_* values, and as KIND_* every
    /// [`ErrorKind`](crate::result::ErrorKind) but the host's own `sandbox`.
    #[test]
    fn the_agent_and_the_host_share_one_table_of_exit_codes_and_error_kinds() {
        use crate::result::{ErrorKind, EXIT_EXCEPTION, EXIT_KILLED, EXIT_OK, EXIT_TIMEOUT};
        use std::collections::BTreeSet;
        let src = crate::agent::AGENT_SOURCE;
        let (_, rest) = src
            .split_once("# -- results table\n")
            .expect("the agent's results table");
        let (table, _) = rest
            .split_once("# -- end of results table\n")
            .expect("the end of the agent's results table");
        let mut exits = BTreeMap::new();
        let mut kinds = BTreeSet::new();
        for line in table.lines() {
            let (name, value) = line
                .split_once(" = ")
                .unwrap_or_else(|| panic!("not NAME = value: {line:?}"));
            if name.starts_with("EXIT_") {
                exits.insert(name.to_string(), value.parse::<i32>().unwrap());
            } else if let Some(kind) = name.strip_prefix("KIND_") {
                let value: String = serde_json::from_str(value).unwrap();
                assert_eq!(kind.to_lowercase(), value, "{line}");
                kinds.insert(value);
            } else {
                panic!("neither EXIT_ nor KIND_: {line:?}");
            }
        }
        let host_exits: BTreeMap<String, i32> = [
            ("EXIT_OK", EXIT_OK),
            ("EXIT_EXCEPTION", EXIT_EXCEPTION),
            ("EXIT_TIMEOUT", EXIT_TIMEOUT),
            ("EXIT_KILLED", EXIT_KILLED),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect();
        assert_eq!(exits, host_exits);
        let host_kinds: BTreeSet<String> = [
            ErrorKind::Exception,
            ErrorKind::Timeout,
            ErrorKind::Oom,
            ErrorKind::Crashed,
            ErrorKind::Sandbox,
            ErrorKind::Exit,
        ]
        .into_iter()
        // Exhaustive: a new kind does not compile until it is sorted here.
        .filter(|k| match k {
            ErrorKind::Sandbox => false,
            ErrorKind::Exception
            | ErrorKind::Timeout
            | ErrorKind::Oom
            | ErrorKind::Crashed
            | ErrorKind::Exit => true,
        })
        .map(|k| {
            serde_json::to_value(k)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
        assert_eq!(kinds, host_kinds);
        // The agent names kinds through its table only.
        for literal in ["kind=\"", "\"kind\": \"", "[\"kind\"] = \""] {
            assert!(
                !src.contains(literal),
                "a kind outside the table: {literal}"
            );
        }
    }
}
