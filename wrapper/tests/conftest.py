"""Session fixtures: a REAL vLLM (CPU) serving a tiny offline-built model, and
wrapper processes (`python -m vllm_wrapper`, real uvicorn) in front of it.

Environment knobs:
  GPUFLEET_CACHE            cache root (default /var/cache/gpufleet); the tiny
                            model is built once into $GPUFLEET_CACHE/tiny-model
  WRAPPER_TEST_VLLM_URL     reuse an already running vLLM instead of starting one
  WRAPPER_TEST_VLLM_TIMEOUT seconds to wait for vLLM's /health (default 420)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

WRAPPER_DIR = Path(__file__).resolve().parents[1]
REPO_DIR = WRAPPER_DIR.parent
CACHE = Path(os.environ.get("GPUFLEET_CACHE", "/var/cache/gpufleet"))
MODEL_NAME = "tiny"
MAX_MODEL_LEN = 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None,
              log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise RuntimeError(f"process for {url} exited with {proc.returncode}:\n{tail}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} not healthy after {timeout} s")


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    found = False
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        metric, _, value = line.rpartition(" ")
        if metric != name and not metric.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in metric for k, v in labels.items()):
            total += float(value)
            found = True
    if not found:
        raise KeyError(f"metric {name} {labels} not found")
    return total


def vllm_metric(vllm_url: str, name: str, **labels: str) -> float:
    """One of vLLM's own metrics, read from its /metrics now (metric_value's sum)."""
    return metric_value(httpx.get(vllm_url + "/metrics").text, name, **labels)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    outdir = CACHE / "tiny-model"
    subprocess.run(
        [sys.executable, str(REPO_DIR / "tests" / "fixtures" / "tiny_model.py"), str(outdir)],
        check=True,
    )
    return outdir


@contextmanager
def serve_vllm(model: Path, log: Path, args: tuple[str, ...] = (),
               extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """A real vLLM OpenAI server (CPU) on the model, with extra args and environment."""
    port = free_port()
    env = {
        **os.environ,
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        **(extra_env or {}),
    }
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model), "--served-model-name", MODEL_NAME,
        "--dtype", "float32", "--max-model-len", str(MAX_MODEL_LEN), "--enforce-eager",
        "--distributed-executor-backend", "uni", "--host", "127.0.0.1", "--port", str(port),
        *args,
    ]
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", float(os.environ.get("WRAPPER_TEST_VLLM_TIMEOUT", "420")),
                  proc, log)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def vllm_url(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The generative vLLM most tests use. It keeps Responses API answers (off by
    default in vLLM) so that retrieve and cancel can be tested, and serves the
    render routes (vLLM answers them 403 without --enable-scale-out); a reused
    WRAPPER_TEST_VLLM_URL needs VLLM_ENABLE_RESPONSES_API_STORE=1 and that flag."""
    existing = os.environ.get("WRAPPER_TEST_VLLM_URL")
    if existing:
        yield existing.rstrip("/")
        return
    with serve_vllm(tiny_model, tmp_path_factory.mktemp("vllm") / "vllm.log",
                    ("--enable-scale-out",),
                    extra_env={"VLLM_ENABLE_RESPONSES_API_STORE": "1"}) as url:
        yield url


@pytest.fixture(scope="module")
def vllm_embed_url(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second vLLM serving the same model as an embedding model: /v1/embeddings
    exists only with the pooling runner (--convert embed turns the causal LM into
    one), and one vLLM serves one runner."""
    log = tmp_path_factory.mktemp("vllm-embed") / "vllm.log"
    with serve_vllm(tiny_model, log, ("--convert", "embed")) as url:
        yield url


class Wrapper:
    """One `python -m vllm_wrapper` process; its stdout (JSON logs) goes to .log."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        full_env = {
            **{k: v for k, v in os.environ.items()
               if not k.startswith(("VLLM_", "PROMETHEUS_MULTIPROC_DIR"))},
            "VLLM_WRAPPER_HOST": "127.0.0.1",
            "VLLM_WRAPPER_PORT": str(self.port),
            "PYTHONPATH": str(WRAPPER_DIR),
            **env,
        }
        with log.open("wb") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vllm_wrapper"], stdout=fh, stderr=subprocess.STDOUT,
                env=full_env, cwd=WRAPPER_DIR,
            )
        wait_http(self.url + "/health", 30, self.proc, log)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def records(self) -> list[dict]:
        """The JSON log records, one per newline-ended line (a logged path may hold
        U+0085 or U+2028, where str.splitlines() would also break)."""
        return [json.loads(line) for line in self.logs().split("\n") if line.strip()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def start_wrapper(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    started: list[Wrapper] = []

    def _start(**env: str) -> Wrapper:
        w = Wrapper(env, tmp_path_factory.mktemp("wrapper") / "wrapper.log")
        started.append(w)
        return w

    yield _start
    for w in started:
        w.stop()


@pytest.fixture(scope="session")
def wrapper(vllm_url: str, start_wrapper) -> Wrapper:
    """Open (no keys) wrapper in front of the real vLLM."""
    return start_wrapper(VLLM_UPSTREAM_URL=vllm_url, VLLM_DEFAULT_MAX_TOKENS="8")


API_KEYS = {"alice": "sk-alice-3c1f0d9e8b7a", "bob": "sk-bob-55aa77cc99ee"}


@pytest.fixture(scope="session")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vllm_wrapper.auth import hash_key

    path = tmp_path_factory.mktemp("keys") / "keys"
    path.write_text(f"# name:sha256\nbob:{hash_key(API_KEYS['bob'])}\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def auth_wrapper(vllm_url: str, start_wrapper, keys_file: Path) -> Wrapper:
    """Wrapper requiring keys: alice inline (VLLM_WRAPPER_API_KEYS), bob from the file."""
    return start_wrapper(
        VLLM_UPSTREAM_URL=vllm_url,
        VLLM_DEFAULT_MAX_TOKENS="8",
        VLLM_WRAPPER_API_KEYS=f"alice:{API_KEYS['alice']}",
        VLLM_WRAPPER_API_KEYS_FILE=str(keys_file),
    )


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture(scope="session")
def counter_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real redis-server (Debian's package; wrapper/ci/test.sh installs it) with a password, as the
    counter_store role runs it: the env a wrapper needs to keep its keys' limits there."""
    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    if binary is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server: wrapper/ci/test.sh does)")
    workdir = tmp_path_factory.mktemp("counter-store")
    port = free_port()
    password = "store-secret-9f8e7d6c"
    (workdir / "password").write_text(password + "\n")
    (workdir / "password").chmod(0o600)
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", "",
         "--appendonly", "no", "--requirepass", password],
        stdout=(workdir / "server.log").open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("redis-server did not start: " + (workdir / "server.log").read_text())
            time.sleep(0.05)
    yield {"VLLM_WRAPPER_LIMITS_STORE": f"redis://127.0.0.1:{port}/0",
           "VLLM_WRAPPER_LIMITS_STORE_PASSWORD_FILE": str(workdir / "password"),
           "port": str(port), "password": password}
    proc.terminate()
    proc.wait(10)
