"""Soak: 2,000 short requests from 200 API clients (plus a few browser turns) against one server.

    python bench/bench_soak.py [--requests 2000] [--clients 200]

Starts ``python app.py --demo`` as its own process on a free local port, then prints the server's
resident memory (RSS) after the first 10% of the requests and at the end, its thread count before
and after, and the files it left in the temp folders. Prints figures; asserts nothing.
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


def temp_entries(gradio_temp: Path) -> int:
    """Entries in the system temp folder plus files under Gradio's cache folder."""
    system = len(os.listdir(tempfile.gettempdir()))
    cached = sum(len(files) for _, _, files in os.walk(gradio_temp)) if gradio_temp.exists() else 0
    return system + cached


def start_server(port: int, gradio_temp: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "GRADIO_TEMP_DIR": str(gradio_temp), "GRADIO_ANALYTICS_ENABLED": "False"}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=200)
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory(prefix="jslm-soak-") as gradio_temp:
        temp = Path(gradio_temp)
        server = start_server(port, temp)
        try:
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
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
