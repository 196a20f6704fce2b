"""An MCP client that starts a long run and waits to be killed (by test_mcp.py).

Usage: victim_client.py stdio BIOCAGE ENGINE [SERVER ARGS...]
       victim_client.py http URL TOKEN

Prints "CONTAINER <id>" once its sandbox is started, then "RUNNING" once the long run
has produced output (a progress notification), then sleeps inside the call.
"""

import os
import sys

import anyio
import httpx2
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

LONG_RUN = "import time\nprint('started', flush=True)\ntime.sleep(120)\n"


def say(line: str) -> None:
    print(line, flush=True)


async def drive(client: Client) -> None:
    info = await client.call_tool("session_info", {})
    say(f"CONTAINER {info.structured_content['container_id']}")

    async def progress(_progress: float, _total: float | None, _message: str | None) -> None:
        say("RUNNING")

    await client.call_tool("run_python", {"code": LONG_RUN, "timeout": 300}, progress_callback=progress)
    say("FINISHED")


async def main() -> None:
    kind = sys.argv[1]
    if kind == "stdio":
        biocage, engine, *extra = sys.argv[2:]
        params = StdioServerParameters(command=biocage, args=["--runtime", engine, "mcp", *extra], env=dict(os.environ))
        async with Client(params) as client:
            await drive(client)
    else:
        url, token = sys.argv[2:4]
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=600)) as http,
            Client(streamable_http_client(url, http_client=http)) as client,
        ):
            await drive(client)


if __name__ == "__main__":
    anyio.run(main)
