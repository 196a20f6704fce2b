//! The agent's protocol without an engine: the embedded agent runs here as a local
//! python3 process and the host side of the channel talks to it.

use std::process::Stdio;
use std::time::Duration;

use biocage_core::agent::serve_argv;
use biocage_core::channel::{AgentChannel, ChannelError};
use biocage_core::protocol::{Hello, Message, Request};
use biocage_core::{AgentStreams, ErrorKind, ExecutionResult};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_util::io::ReaderStream;

async fn agent(config: Value) -> (AgentChannel, Hello, tokio::process::Child) {
    let argv = serve_argv(&config);
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 on the host");
    let stdout = ReaderStream::new(child.stdout.take().unwrap()).boxed();
    let stdin = Box::pin(child.stdin.take().unwrap());
    let (ch, hello) = AgentChannel::open(
        AgentStreams { stdout, stdin },
        Duration::from_secs(20),
        64 << 20,
    )
    .await
    .expect("hello");
    (ch, hello, child)
}

fn run_request(code: &str, timeout: f64) -> Request {
    Request::Run {
        code: code.into(),
        timeout,
        script: None,
        filename: None,
        stream: false,
    }
}

async fn run(ch: &AgentChannel, code: &str, timeout: f64) -> ExecutionResult {
    match ch
        .request(&run_request(code, timeout), Duration::from_secs(60))
        .await
        .expect("reply")
    {
        Message::Result(r) => *r,
        other => panic!("not a result: {other:?}"),
    }
}

fn kind(r: &ExecutionResult) -> Option<ErrorKind> {
    r.error.as_ref().map(|e| e.kind)
}

#[tokio::test]
async fn hello_run_state_and_result_fields() {
    let (ch, hello, _child) = agent(json!({"output_cap": 64})).await;
    assert_eq!(hello.agent_version, Some(2));
    if cfg!(target_arch = "x86_64") {
        assert!(hello.seccomp, "the namespace filter is in place: {hello:?}");
    }
    let r = run(&ch, "x = 2\nprint('a' * 100)\nx * 21", 5.0).await;
    assert!(r.success);
    assert_eq!(r.exit_code, 0);
    assert_eq!(r.value.as_deref(), Some("42"));
    assert_eq!(r.stdout.len(), 64);
    assert!(r.stdout_truncated);
    assert!(r.error.is_none());
    let r = run(&ch, "print(x)", 5.0).await;
    assert_eq!(r.stdout, "2\n");
}

#[tokio::test]
async fn exceptions_timeouts_and_deaths() {
    let (ch, _, _child) = agent(json!({"interrupt_grace": 0.5})).await;
    let r = run(&ch, "raise KeyError('k')", 5.0).await;
    assert_eq!(r.exit_code, 1);
    assert_eq!(kind(&r), Some(ErrorKind::Exception));
    assert_eq!(
        r.error.as_ref().and_then(|e| e.name.as_deref()),
        Some("KeyError")
    );
    let r = run(&ch, "import time\ntime.sleep(30)", 0.5).await;
    assert_eq!(r.exit_code, 124);
    assert_eq!(kind(&r), Some(ErrorKind::Timeout));
    assert!(!r.state_lost);
    let r = run(
        &ch,
        "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass",
        0.5,
    )
    .await;
    assert_eq!(r.exit_code, 124);
    assert!(r.state_lost);
    let r = run(&ch, "import os\nos._exit(5)", 5.0).await;
    assert_eq!(kind(&r), Some(ErrorKind::Crashed));
    assert!(r.state_lost);
    let r = run(&ch, "print('alive')", 5.0).await;
    assert_eq!(r.stdout, "alive\n");
}

#[tokio::test]
async fn malformed_requests_get_errors_and_the_channel_goes_on() {
    let (ch, _, _child) = agent(json!({})).await;
    let r = ch
        .request(&json!({"op": "nonsense"}), Duration::from_secs(10))
        .await
        .unwrap();
    let Message::Error { message } = r else {
        panic!("{r:?}")
    };
    assert!(message.contains("unknown op"), "{message}");
    let r = run(&ch, "print(1)", 5.0).await;
    assert_eq!(r.stdout, "1\n");
}

#[tokio::test]
async fn a_dead_agent_closes_the_channel() {
    let (ch, _, mut child) = agent(json!({})).await;
    child.kill().await.unwrap();
    let err = ch
        .request(&Request::Ping, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ChannelError::Closed | ChannelError::Send(_)),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_oversize_reply_fails_its_request_and_the_channel_goes_on() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let (host_out, agent_in) = tokio::io::duplex(1 << 16);
    let (mut agent_out, host_in) = tokio::io::duplex(1 << 16);
    let fake_agent = tokio::spawn(async move {
        agent_out.write_all(b"{\"op\":\"hello\"}\n").await.unwrap();
        let mut requests = BufReader::new(agent_in);
        let mut line = String::new();
        requests.read_line(&mut line).await.unwrap();
        // A forged 8 MiB reply to request 1, in small chunks, then a normal one to 2.
        agent_out
            .write_all(b"{\"id\":1,\"op\":\"result\",\"stdout\":\"")
            .await
            .unwrap();
        for _ in 0..128 {
            agent_out.write_all(&[b'a'; 64 << 10]).await.unwrap();
        }
        agent_out.write_all(b"\"}\n").await.unwrap();
        line.clear();
        requests.read_line(&mut line).await.unwrap();
        agent_out
            .write_all(b"{\"id\":2,\"op\":\"ok\"}\n")
            .await
            .unwrap();
        agent_out
    });
    let streams = AgentStreams {
        stdout: ReaderStream::new(host_in).boxed(),
        stdin: Box::pin(host_out),
    };
    let (ch, _) = AgentChannel::open(streams, Duration::from_secs(10), 1 << 20)
        .await
        .unwrap();
    let r = ch
        .request(&run_request("1", 5.0), Duration::from_secs(10))
        .await
        .unwrap();
    let Message::Error { message } = r else {
        panic!("{r:?}")
    };
    assert!(message.contains("over"), "{message}");
    let r = ch
        .request(&Request::Ping, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(matches!(r, Message::Ok(_)), "the channel goes on: {r:?}");
    drop(fake_agent.await.unwrap());
}

#[tokio::test]
async fn unknown_ops_are_ignored_and_a_malformed_reply_fails_its_request() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let (host_out, agent_in) = tokio::io::duplex(1 << 16);
    let (mut agent_out, host_in) = tokio::io::duplex(1 << 16);
    let fake_agent = tokio::spawn(async move {
        agent_out
            .write_all(b"{\"id\":null,\"op\":\"hello\",\"agent_version\":2}\n")
            .await
            .unwrap();
        let mut requests = BufReader::new(agent_in);
        let mut line = String::new();
        requests.read_line(&mut line).await.unwrap();
        // An op this host does not know, then a result that is not one.
        agent_out
            .write_all(b"{\"id\":1,\"op\":\"shiny\",\"x\":1}\n{\"id\":1,\"op\":\"result\",\"success\":\"yes\"}\n")
            .await
            .unwrap();
        line.clear();
        requests.read_line(&mut line).await.unwrap();
        // A line that is not UTF-8, then the reply.
        agent_out
            .write_all(b"\xff\xfe\n{\"id\":2,\"op\":\"ok\",\"busy\":false}\n")
            .await
            .unwrap();
        agent_out
    });
    let streams = AgentStreams {
        stdout: ReaderStream::new(host_in).boxed(),
        stdin: Box::pin(host_out),
    };
    let (ch, hello) = AgentChannel::open(streams, Duration::from_secs(10), 1 << 20)
        .await
        .unwrap();
    assert_eq!(hello.agent_version, Some(2));
    let err = ch
        .request(&run_request("1", 5.0), Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(matches!(err, ChannelError::Malformed(_)), "{err:?}");
    let r = ch
        .request(&Request::Ping, Duration::from_secs(10))
        .await
        .unwrap();
    let Message::Ok(reply) = r else {
        panic!("the channel goes on: {r:?}")
    };
    assert_eq!(reply.busy, Some(false));
    drop(fake_agent.await.unwrap());
}
