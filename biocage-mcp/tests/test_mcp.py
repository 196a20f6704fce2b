"""`biocage mcp` driven by the official MCP Python SDK, over stdio and streamable HTTP,
on every engine under test.

Engines follow the Rust suite: BIOCAGE_TEST_ENGINES=docker,podman selects them; a listed
engine that cannot be reached fails; without the variable every engine test is skipped
with the reason (never passed). scripts/test.sh runs this file.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

ROOT = Path(__file__).resolve().parents[2]
BIOCAGE = os.environ.get("BIOCAGE_BIN", str(ROOT / "target" / "debug" / "biocage"))
ENGINES_VAR = "BIOCAGE_TEST_ENGINES"
TOKEN = "biocage-mcp-test-token-" + base64.b16encode(os.urandom(12)).decode().lower()
VICTIM = Path(__file__).with_name("victim_client.py")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ----------------------------------------------------------------- engines and servers


def engine_flags(engine: str) -> list[str]:
    # Rootless Podman on cgroup v1 cannot hold a cpu limit: allowed and reported, as the
    # Rust suite does.
    return ["--allow-unenforced"] if engine == "podman" else []


@pytest.fixture(scope="module", params=["docker", "podman"])
def engine(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    wanted = os.environ.get(ENGINES_VAR)
    if wanted is None:
        pytest.skip(f"engine tests do not run; set {ENGINES_VAR}=docker,podman (scripts/test.sh does)")
    if name not in [e.strip() for e in wanted.split(",")]:
        pytest.skip(f"{name} is not listed in {ENGINES_VAR}={wanted}")
    if not Path(BIOCAGE).exists():
        pytest.fail(f"{BIOCAGE} is missing; build it with `cargo build -p biocage-cli`")
    probe = subprocess.run([BIOCAGE, "--runtime", name, "ps"], capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        pytest.fail(f"{name} is required by {ENGINES_VAR} but unusable: {probe.stderr.strip()}")
    return name


@dataclass
class HttpServer:
    """A `biocage mcp --http` process and what it printed on stderr."""

    process: subprocess.Popen[str]
    url: str = ""
    lines: list[str] = field(default_factory=list)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_http_server(engine: str, tmp: Path, *extra: str) -> HttpServer:
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    cmd = [BIOCAGE, "--runtime", engine, "mcp", "--http", "127.0.0.1:0", "--token-file", str(token_file)]
    process = subprocess.Popen(
        [*cmd, *engine_flags(engine), *extra],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = HttpServer(process)
    ready = threading.Event()

    def read_stderr() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            server.lines.append(line)
            if "listening on http://" in line:
                server.url = line.split("listening on ", 1)[1].split()[0]
                ready.set()
        ready.set()

    threading.Thread(target=read_stderr, daemon=True).start()
    if not ready.wait(120) or not server.url:
        server.stop()
        pytest.fail("biocage mcp --http did not start:\n" + "".join(server.lines))
    return server


@pytest.fixture(scope="module")
def http_server(engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    server = start_http_server(engine, tmp_path_factory.mktemp("mcp-http"))
    yield server
    server.stop()
    assert server.process.returncode == 0, "".join(server.lines)


@asynccontextmanager
async def http_client(url: str, token: str | None = TOKEN) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=600)) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


@asynccontextmanager
async def stdio_client(engine: str, *extra: str) -> AsyncIterator[Client]:
    # MCP clients give servers a minimal environment; CONTAINER_HOST (Podman) is passed
    # on, as a client's "env" setting would.
    params = StdioServerParameters(
        command=BIOCAGE, args=["--runtime", engine, "mcp", *engine_flags(engine), *extra], env=dict(os.environ)
    )
    async with Client(params) as client:
        yield client


@pytest.fixture(params=["stdio", "http"])
def transport(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def connect(transport: str, engine: str, request: pytest.FixtureRequest):
    """Opens a client over the transport under test."""
    if transport == "stdio":
        return lambda: stdio_client(engine)
    server: HttpServer = request.getfixturevalue("http_server")
    return lambda: http_client(server.url)


# ------------------------------------------------------------------------- helpers


def texts(result) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


async def run(client: Client, code: str, **extra):
    return await client.call_tool("run_python", {"code": code, **extra})


async def container_of(client: Client) -> str:
    info = await client.call_tool("session_info", {})
    assert not info.is_error, texts(info)
    return info.structured_content["container_id"]


def container_ids(engine: str) -> set[str]:
    out = subprocess.run(
        [BIOCAGE, "--runtime", engine, "--json", "ps"], capture_output=True, text=True, timeout=120, check=True
    )
    return {s["container_id"] for s in json.loads(out.stdout)}


def wait_gone(engine: str, container: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if container not in container_ids(engine):
            return
        time.sleep(0.5)
    pytest.fail(f"sandbox {container[:12]} is still there {seconds:.0f} s after its client went away")


# ---------------------------------------------------------------------------- tests


async def test_tools_are_listed_with_schemas_and_descriptions(connect) -> None:
    async with connect() as client:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(listed) == {
        "run_python",
        "reset_session",
        "interrupt",
        "write_file",
        "read_file",
        "list_files",
        "session_info",
    }
    for tool in listed.values():
        assert tool.input_schema["type"] == "object"
        assert len(tool.description or "") > 80, tool.name
        for name, prop in tool.input_schema.get("properties", {}).items():
            assert prop.get("description"), f"{tool.name}.{name}"
    run_python = listed["run_python"]
    assert run_python.input_schema["required"] == ["code"]
    assert "timeout" in run_python.input_schema["properties"]
    assert run_python.output_schema and "state_lost" in run_python.output_schema["properties"]
    described = run_python.description or ""
    for fact in ["state", "NO network", "/workspace", "512 MiB", "30 s", "write_file"]:
        assert fact in described, fact


async def test_state_persists_between_calls_as_in_the_reference_readme(connect) -> None:
    setup = """
    import pandas as pd
    import numpy as np

    # Define helper functions
    def analyze_data(data):
        return {
            'mean': np.mean(data),
            'std': np.std(data),
            'count': len(data)
        }

    # Initialize data
    df = pd.DataFrame({
        'values': np.random.randn(1000),
        'category': np.random.choice(['A', 'B', 'C'], 1000)
    })
    """
    use = """
    # Everything from previous execution is still available
    stats = analyze_data(df['values'])
    print(f"Data statistics: {stats}")

    # Modify the DataFrame
    df['squared'] = df['values'] ** 2
    print(f"DataFrame shape: {df.shape}")
    """
    async with connect() as client:
        first = await run(client, setup)
        assert not first.is_error, texts(first)
        second = await run(client, use)
        assert not second.is_error, texts(second)
        assert "Data statistics: {'mean':" in texts(second)
        assert "'count': 1000}" in texts(second)
        assert "DataFrame shape: (1000, 3)" in texts(second)
        result = second.structured_content
        assert result["success"] is True and result["exit_code"] == 0 and result["error"] is None
        assert "DataFrame shape: (1000, 3)" in result["stdout"]
        third = await run(client, "df.shape")
        assert "(1000, 3)" in texts(third)
        assert third.structured_content["value"] == "(1000, 3)"


async def test_a_plot_comes_back_as_an_image(connect) -> None:
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('sandbox plot')\n"
    async with connect() as client:
        result = await run(client, code)
    assert not result.is_error, texts(result)
    images = [block for block in result.content if block.type == "image"]
    assert len(images) == 1
    assert images[0].mime_type == "image/png"
    assert base64.b64decode(images[0].data).startswith(PNG_MAGIC)
    # The structured result says a figure came, without its bytes twice.
    assert result.structured_content["images"][0]["mime"] == "image/png"


async def test_rich_displays_come_back_as_text_and_html(connect) -> None:
    code = "import pandas as pd\ndisplay(pd.DataFrame({'a': [1, 2]}))\n41 + 1"
    async with connect() as client:
        result = await run(client, code)
    assert not result.is_error, texts(result)
    assert "42" in texts(result)
    resources = [block.resource for block in result.content if block.type == "resource"]
    assert any(r.mime_type == "text/html" and "<table" in r.text for r in resources)


async def test_a_file_written_is_read_back_and_listed(connect) -> None:
    blob = PNG_MAGIC + os.urandom(64)
    async with connect() as client:
        wrote = await client.call_tool("write_file", {"path": "notes/hello.txt", "content": "héllo\n"})
        assert not wrote.is_error, texts(wrote)
        assert "/workspace/notes/hello.txt" in texts(wrote)
        read = await client.call_tool("read_file", {"path": "/workspace/notes/hello.txt"})
        assert not read.is_error and texts(read) == "héllo\n"
        # Sandbox code sees the file, and what it writes can be read back.
        made = await run(
            client, "print(open('notes/hello.txt').read().upper(), end='')\nopen('out.csv', 'w').write('a,b\\n1,2\\n')"
        )
        assert texts(made).startswith("HÉLLO")
        out = await client.call_tool("read_file", {"path": "out.csv"})
        assert texts(out) == "a,b\n1,2\n"
        # Binary data in and out: base64 both ways, an image comes back as an image.
        binary = await client.call_tool(
            "write_file",
            {"path": "/tmp/pic.png", "content": base64.b64encode(blob).decode(), "encoding": "base64"},
        )
        assert not binary.is_error, texts(binary)
        back = await client.call_tool("read_file", {"path": "/tmp/pic.png"})
        images = [block for block in back.content if block.type == "image"]
        assert images and base64.b64decode(images[0].data) == blob
        raw = await client.call_tool("read_file", {"path": "/tmp/pic.png", "encoding": "base64"})
        assert base64.b64decode(texts(raw)) == blob
        other = base64.b64encode(b"\x00\xff\x00binary").decode()
        await client.call_tool("write_file", {"path": "data.bin", "content": other, "encoding": "base64"})
        blob_back = await client.call_tool("read_file", {"path": "data.bin"})
        blobs = [block.resource for block in blob_back.content if block.type == "resource"]
        assert blobs and base64.b64decode(blobs[0].blob) == b"\x00\xff\x00binary"
        listed = await client.call_tool("list_files", {})
        assert {"notes", "out.csv", "data.bin"} <= set(listed.structured_content["names"])
        nested = await client.call_tool("list_files", {"path": "notes"})
        assert nested.structured_content["names"] == ["hello.txt"]
        # The path rules hold: no '..', nothing outside the writable places.
        for path in ["../etc/passwd", "/etc/passwd", "/usr/lib/x.txt"]:
            refused = await client.call_tool("write_file", {"path": path, "content": "x"})
            assert refused.is_error, path
        outside = await client.call_tool("read_file", {"path": "/etc/hostname"})
        assert outside.is_error
        missing = await client.call_tool("read_file", {"path": "nope.txt"})
        assert missing.is_error and "nope.txt" in texts(missing)


async def test_a_timeout_is_an_error_result_and_state_is_kept(connect) -> None:
    async with connect() as client:
        await run(client, "kept = 'still here'")
        started = time.monotonic()
        result = await run(client, "import time\nprint('going', flush=True)\ntime.sleep(30)", timeout=1)
        assert time.monotonic() - started < 15
        assert result.is_error
        assert "time limit of 1 s" in texts(result)
        assert result.structured_content["error"]["kind"] == "timeout"
        assert result.structured_content["exit_code"] == 124
        assert "going" in result.structured_content["stdout"]
        after = await run(client, "print(kept)")
        assert texts(after).strip() == "still here"
        too_long = await run(client, "1", timeout=10**6)
        assert too_long.is_error and "timeout" in texts(too_long)


async def test_failures_are_tool_errors_not_protocol_errors(connect) -> None:
    async with connect() as client:
        raised = await run(client, "x = 1\n\ndef f():\n    return 1 / 0\n\nf()")
        assert raised.is_error
        assert "ZeroDivisionError" in texts(raised)
        assert "return 1 / 0" in texts(raised)  # the traceback points into the user's code
        error = raised.structured_content["error"]
        assert error["kind"] == "exception" and error["name"] == "ZeroDivisionError"
        assert "biocage_agent" not in error["traceback"]
        syntax = await run(client, "def broken(:\n    pass")
        assert syntax.is_error and "SyntaxError" in texts(syntax)
        # State survived both.
        assert texts(await run(client, "x")).strip() == "1"
        exited = await run(client, "import sys; sys.exit(3)")
        assert exited.is_error and exited.structured_content["exit_code"] == 3
        missing = await client.call_tool("run_python", {})
        assert missing.is_error and "code" in texts(missing)
        with pytest.raises(MCPError):
            await client.call_tool("no_such_tool", {})
        # The connection is still fine.
        assert texts(await run(client, "x + 1")).strip() == "2"


async def test_lost_state_is_said_plainly(connect) -> None:
    async with connect() as client:
        await run(client, "precious = 1")
        crashed = await run(client, "import os\nos._exit(9)")
        assert crashed.is_error
        assert crashed.structured_content["state_lost"] is True
        assert "STATE LOST" in texts(crashed)
        gone = await run(client, "precious")
        assert gone.is_error and "NameError" in texts(gone)


async def test_output_streams_as_progress_while_the_run_goes_on(connect) -> None:
    seen: list[tuple[float, str]] = []

    async def progress(_progress: float, _total: float | None, message: str | None) -> None:
        seen.append((time.monotonic(), message or ""))

    code = "import time\nfor i in range(4):\n    print(f'step {i}', flush=True)\n    time.sleep(0.5)\n"
    async with connect() as client:
        result = await client.call_tool("run_python", {"code": code}, progress_callback=progress)
        finished = time.monotonic()
    assert not result.is_error, texts(result)
    streamed = "".join(message for _, message in seen)
    assert [f"step {i}" for i in range(4)] == [line for line in streamed.splitlines() if line]
    assert seen[0][0] < finished - 1.0, "the first output arrived only at the end"


async def test_interrupt_stops_the_running_code_and_keeps_state(connect) -> None:
    import anyio

    async with connect() as client:
        await run(client, "kept = 7")
        results = {}
        running = anyio.Event()

        async def started(_progress: float, _total: float | None, _message: str | None) -> None:
            running.set()

        async def long_run() -> None:
            code = "import time\nprint('looping', flush=True)\nwhile True:\n    time.sleep(0.1)"
            results["run"] = await client.call_tool(
                "run_python", {"code": code, "timeout": 60}, progress_callback=started
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(long_run)
            with anyio.fail_after(30):
                await running.wait()
            stopped = await client.call_tool("interrupt", {})
            assert not stopped.is_error and "Interrupted" in texts(stopped)
        result = results["run"]
        assert result.is_error and "KeyboardInterrupt" in texts(result)
        assert result.structured_content["state_lost"] is False
        assert texts(await run(client, "kept")).strip() == "7"
        idle = await client.call_tool("interrupt", {})
        assert "Nothing is running" in texts(idle)


async def test_reset_session_gives_a_fresh_interpreter(connect) -> None:
    async with connect() as client:
        await run(client, "gone_soon = 1\nopen('keep.txt', 'w').write('x')")
        reset = await client.call_tool("reset_session", {})
        assert not reset.is_error, texts(reset)
        after = await run(client, "gone_soon")
        assert after.is_error and "NameError" in texts(after)
        assert texts(await run(client, "print(open('keep.txt').read())")).strip() == "x"


async def test_session_info_tells_limits_and_how_each_is_enforced(connect, engine: str) -> None:
    async with connect() as client:
        info = await client.call_tool("session_info", {})
    assert not info.is_error, texts(info)
    data = info.structured_content
    assert data["runtime"] == engine and data["is_running"] is True
    limits = {limit["name"]: limit for limit in data["limits"]}
    assert {"memory", "pids", "cpu", "network"} <= set(limits)
    assert all(limit["enforcement"] in {"engine", "rlimit", "agent", "unenforced"} for limit in limits.values())
    text = texts(info)
    assert "memory 512m" in text and "network off" in text


async def test_each_http_client_has_a_sandbox_of_its_own(engine: str, http_server: HttpServer) -> None:
    async with http_client(http_server.url) as one, http_client(http_server.url) as two:
        await run(one, "mine = 'one'")
        other = await run(two, "mine")
        assert other.is_error and "NameError" in texts(other)
        assert await container_of(one) != await container_of(two)
        container = await container_of(one)
    # Leaving (the SDK ends the MCP session) removes the sandbox.
    wait_gone(engine, container, 30)


async def test_http_refuses_requests_without_the_token(engine: str, http_server: HttpServer) -> None:
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    headers = {"Accept": "application/json, text/event-stream"}
    async with httpx2.AsyncClient(timeout=30) as http:
        for auth in [None, "Bearer wrong-token-wrong-token", f"Basic {TOKEN}", TOKEN]:
            sent = dict(headers, **({"Authorization": auth} if auth else {}))
            refused = await http.post(http_server.url, json=ping, headers=sent)
            assert refused.status_code == 401, auth
            assert refused.headers["www-authenticate"].startswith("Bearer")
        missing = await http.get(http_server.url, headers=headers)
        assert missing.status_code == 401
        # With the token, a malformed request is answered with a JSON-RPC error.
        authorized = dict(headers, Authorization=f"Bearer {TOKEN}", **{"Content-Type": "application/json"})
        garbage = await http.post(http_server.url, content=b"{not json", headers=authorized)
        assert garbage.status_code == 400
        assert garbage.json()["error"]["code"] == -32700
        shapeless = await http.post(http_server.url, json={"hello": "world"}, headers=authorized)
        assert shapeless.status_code == 400
        assert shapeless.json()["error"]["code"] == -32600
    with pytest.raises(ExceptionGroup) as refused:
        async with http_client(http_server.url, token=None) as client:
            await client.list_tools()
    assert refused.group_contains(MCPError, match="Unauthorized")
    # The server is still serving.
    async with http_client(http_server.url) as client:
        assert texts(await run(client, "6 * 7")).strip() == "42"


async def test_stdio_answers_malformed_lines_with_json_rpc_errors(engine: str) -> None:
    process = subprocess.Popen(
        [BIOCAGE, "--runtime", engine, "mcp", *engine_flags(engine)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdin and process.stdout
    try:

        def ask(line: str) -> dict:
            process.stdin.write(line + "\n")
            process.stdin.flush()
            return json.loads(process.stdout.readline())

        assert ask("this is not json")["error"]["code"] == -32700
        assert ask('{"jsonrpc": "2.0", "id": 1, "method": ')["error"]["code"] == -32700
        assert ask('{"hello": "world"}')["error"]["code"] == -32600
        answer = ask(json.dumps(dict(INITIALIZE, id=2)))
        assert answer["id"] == 2 and answer["result"]["serverInfo"]["name"] == "biocage"
        process.stdin.write(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}) + "\n")
        unknown = ask(json.dumps({"jsonrpc": "2.0", "id": 3, "method": "no/such/method"}))
        assert unknown["id"] == 3 and unknown["error"]["code"] == -32601
        listed = ask(json.dumps({"jsonrpc": "2.0", "id": 4, "method": "tools/list"}))
        assert len(listed["result"]["tools"]) == 7
    finally:
        process.stdin.close()
        assert process.wait(timeout=30) == 0


def children(pid: int) -> list[int]:
    """The child processes of `pid`."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(child) for child in task.read_text().split()]
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill_victim_mid_run(engine: str, args: list[str]) -> tuple[str, list[int]]:
    """Starts victim_client.py, kills it (SIGKILL) during its run; returns its container
    and the processes it had started (a stdio server)."""
    victim = subprocess.Popen(
        [sys.executable, str(VICTIM), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert victim.stdout
    container = ""
    try:
        deadline = time.monotonic() + 120
        for line in victim.stdout:
            if line.startswith("CONTAINER "):
                container = line.split()[1]
            if line.strip() == "RUNNING" or time.monotonic() > deadline:
                break
        assert container, "the victim client never got a sandbox"
        assert container in container_ids(engine)
        servers = children(victim.pid)
    finally:
        # Only the client dies; a stdio server is its child and must notice alone.
        victim.kill()
        victim.wait(timeout=30)
    return container, servers


async def test_a_stdio_client_killed_mid_run_leaves_no_container(engine: str) -> None:
    container, servers = kill_victim_mid_run(engine, ["stdio", BIOCAGE, engine, *engine_flags(engine)])
    assert servers, "the stdio server was not found"
    wait_gone(engine, container, 60)
    # The orphaned server saw its stdin close and exited.
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in servers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in servers), "the stdio server outlived its client"


async def test_an_http_client_killed_mid_run_leaves_no_container(engine: str, http_server: HttpServer) -> None:
    container, _ = kill_victim_mid_run(engine, ["http", http_server.url, TOKEN])
    wait_gone(engine, container, 60)
    # The server itself goes on.
    async with http_client(http_server.url) as client:
        assert texts(await run(client, "1 + 1")).strip() == "2"


async def test_http_sessions_expire_when_idle_and_are_capped(engine: str, tmp_path: Path) -> None:
    server = start_http_server(engine, tmp_path, "--idle-timeout", "3", "--max-sessions", "1")
    try:
        async with http_client(server.url) as client:
            container = await container_of(client)
            async with httpx2.AsyncClient(timeout=30) as http:
                headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json, text/event-stream"}
                full = await http.post(server.url, json=INITIALIZE, headers=headers)
                assert full.status_code == 503 and "maximum of 1" in full.text
            # A long quiet run is not idleness.
            busy = await run(client, "import time\ntime.sleep(5)\n'done'", timeout=10)
            assert not busy.is_error and "done" in texts(busy)
            wait_gone(engine, container, 30)
            with pytest.raises(MCPError, match="Session terminated"):
                await run(client, "1")
    finally:
        server.stop()


async def test_a_pool_hands_a_fresh_sandbox_at_reset(engine: str) -> None:
    async with stdio_client(engine, "--pool", "1") as client:
        first = await container_of(client)
        await client.call_tool("reset_session", {})
        second = await container_of(client)
        assert first != second
        assert texts(await run(client, "1 + 1")).strip() == "2"
    wait_gone(engine, second, 30)
    wait_gone(engine, first, 30)
