"""Soak: 2,000 short requests from 200 API clients (plus a few browser turns) against one server,
then large accepted requests, each from a fresh session.

    python bench/bench_soak.py [--requests 2000] [--clients 200] [--large 300]

The large part sends, from a new session each time, an export of a 300,000-character conversation
(a UI handler called by its ``fn_index``) and a ``/prompt`` over the same history, and prints the
server's RSS every 25 requests: the memory curve (goal: under +100 MB over the first 100, flat after).

Starts ``python app.py --demo`` as its own process on a free local port, then prints the server's
resident memory (RSS) after the first 10% of the requests and at the end, its idle thread count at
start, after the first 10% and at the end (AnyIO keeps idle worker threads for reuse, so the count
levels off after warm-up rather than returning to the start), and the files it left in its own
temp folder (its TMPDIR and Gradio's cache). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gradio_client import Client

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def settled_threads(pid: int, seconds: float = 30) -> int:
    """The server's thread count once idle worker threads have exited (anyio retires them after 10 s)."""
    deadline, count = time.monotonic() + seconds, threads(pid)
    while time.monotonic() < deadline:
        time.sleep(1)
        count = threads(pid)
    return count


def temp_entries(temp: Path) -> int:
    """Files and folders under the server's own temp folder (its TMPDIR and GRADIO_TEMP_DIR)."""
    return sum(len(folders) + len(files) for _, folders, files in os.walk(temp))


def start_server(port: int, gradio_temp: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TMPDIR": str(gradio_temp),
        "GRADIO_TEMP_DIR": str(gradio_temp / "gradio"),
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    command = [sys.executable, "app.py", "--demo", "--port", str(port), "--concurrency", "2", "--queue-size", "256"]
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("the server did not start")


def browser_turns(url: str, turns: int) -> None:
    """A real browser tab sends ``turns`` messages and waits for each reply."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless"])
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#jslm-input textarea")
        for turn in range(turns):
            box = page.locator("#jslm-input textarea")
            box.fill(f"こんにちは {turn}")
            box.press("Enter")
            page.locator('#jslm-chatbot [data-testid="bot"]').nth(turn).wait_for(timeout=60_000)
            page.locator("#jslm-send:not([disabled])").wait_for(timeout=60_000)
        browser.close()


LARGE_HISTORY = [
    {"role": role, "content": [{"type": "text", "text": f"{index} " + "日本の四季と文化について。" * 575}]}
    for index in range(20)
    for role in ("user", "assistant")
]  # 40 messages, about 300,000 characters: inside the 400,000 the app accepts


def large_requests(url: str, pid: int, count: int) -> None:
    """``count`` large accepted requests from fresh sessions; prints the RSS curve."""
    import uuid

    import httpx

    with httpx.Client(base_url=url, timeout=120) as http:
        dependencies = http.get("/config").json()["dependencies"]
        export = next(dep["id"] for dep in dependencies if dep.get("api_name") == "export_json")
        controls = ["", 64, 0.7, 0.95, 50, 1.1, ""]
        plain = [{"role": m["role"], "content": m["content"][0]["text"]} for m in LARGE_HISTORY]
        start = rss_mib(pid)
        print(f"large requests from fresh sessions: RSS {start:.0f} MiB at start")
        for index in range(1, count + 1):
            session = uuid.uuid4().hex
            body = {"fn_index": export, "data": [LARGE_HISTORY, *controls], "session_hash": session}
            assert http.post("/gradio_api/run/predict", json=body).status_code == 200
            asked = {"data": ["次は？", plain, "", 64, 0.7, 0.95, 50, 1.1, None, False]}
            event = http.post("/gradio_api/call/prompt", json=asked).json()["event_id"]
            answer = http.get(f"/gradio_api/call/prompt/{event}").text
            assert "event: complete" in answer, answer[:300]
            if index % 25 == 0:
                rss = rss_mib(pid)
                print(f"  after {index:4d}: RSS {rss:.0f} MiB ({rss - start:+.0f} MiB)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--large", type=int, default=300, help="large requests from fresh sessions (0: none)")
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory(prefix="jslm-soak-") as gradio_temp:
        temp = Path(gradio_temp)
        server = start_server(port, temp)
        try:
            if args.requests == 0:
                large_requests(url, server.pid, args.large)
                return
            baseline_threads, baseline_files = threads(server.pid), temp_entries(temp)
            clients = [Client(url, verbose=False) for _ in range(args.clients)]

            def one(index: int) -> bool:
                clients[index % len(clients)].predict(
                    f"質問 {index}", [], max_new_tokens=8, seed=index, api_name="/chat"
                )
                return True  # an error would raise

            started = time.monotonic()
            warmup = args.requests // 10
            with ThreadPoolExecutor(max_workers=16) as pool:
                done = sum(pool.map(one, range(warmup)))
                rss_early, threads_early = rss_mib(server.pid), settled_threads(server.pid)
                browsers = [pool.submit(browser_turns, url, 5) for _ in range(2)]
                done += sum(pool.map(one, range(warmup, args.requests)))
                for browser in browsers:
                    browser.result()
            seconds = time.monotonic() - started
            threads_late = settled_threads(server.pid)
            rss_late = rss_mib(server.pid)
            print(f"{done} of {args.requests} API requests answered in {seconds:.0f} s, plus 2 browsers × 5 turns")
            print(f"server RSS after {warmup} requests: {rss_early:.0f} MiB; after all: {rss_late:.0f} MiB")
            print(f"  change: {100 * (rss_late - rss_early) / rss_early:+.1f}%")
            print(f"server threads, idle: {baseline_threads} at start, {threads_early} after {warmup} requests,")
            print(f"  {threads_late} after all")
            print(f"temp files: {baseline_files} before, {temp_entries(temp)} after")
            large_requests(url, server.pid, args.large)
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
