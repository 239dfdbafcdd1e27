"""vLLM in-process: the same Generator Protocol over vLLM's async engine, for a GPU host
where the service and the model share one process (no HTTP hop).

Needs ``vllm`` importable (``pip install 'rag-service[vllm]'``); most deployments run
vLLM as a separate server and use the ``vllm`` backend instead. The engine batches every
request in flight (continuous batching); a stream that is closed early aborts its request.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ..errors import BackendUnavailableError
from .base import Generation, GenerationRequest, PromptStyle

if TYPE_CHECKING:
    from ..settings import Settings


class VLLMEngineGenerator:
    can_stream = True
    supports_prefix_cache = True

    def __init__(
        self,
        model: str,
        *,
        api: str = "completions",
        served_name: str | None = None,
        gpu_memory_utilization: float = 0.9,
        tensor_parallel_size: int = 1,
        quantization: str | None = None,
        enable_prefix_caching: bool = True,
        max_num_seqs: int = 256,
        max_model_len: int | None = 4096,
        dtype: str = "auto",
        enforce_eager: bool = False,
        temperature: float = 0.0,
    ) -> None:
        try:
            from vllm import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise BackendUnavailableError(
                "the vllm-engine backend needs vLLM in this environment - `pip install 'rag-service[vllm]'` "
                "on a GPU host, or run `vllm serve` and use the `vllm` backend"
            ) from exc
        args = AsyncEngineArgs(
            model=model,
            served_model_name=[served_name] if served_name else None,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            quantization=quantization,
            enable_prefix_caching=enable_prefix_caching,
            max_num_seqs=max_num_seqs,
            max_model_len=max_model_len,
            dtype=dtype,
            enforce_eager=enforce_eager,
        )
        self._engine = AsyncLLM.from_engine_args(args)
        self.name = f"vllm-engine:{served_name or model.rstrip('/').rsplit('/', 1)[-1]}"
        self.prompt_style: PromptStyle = "chat" if api == "chat" else "completion"
        self.temperature = temperature

    @classmethod
    def from_settings(cls, settings: Settings) -> VLLMEngineGenerator:
        if not settings.vllm_engine_model:
            raise BackendUnavailableError("set RAG_VLLM_ENGINE_MODEL to a model folder or hub id for vllm-engine")
        return cls(
            settings.vllm_engine_model,
            api=settings.vllm_api,
            served_name=settings.vllm_model,
            gpu_memory_utilization=settings.vllm_engine_gpu_memory_utilization,
            tensor_parallel_size=settings.vllm_engine_tensor_parallel_size,
            quantization=settings.vllm_engine_quantization,
            enable_prefix_caching=settings.vllm_engine_enable_prefix_caching,
            max_num_seqs=settings.vllm_engine_max_num_seqs,
            temperature=settings.temperature,
        )

    async def _prompt(self, request: GenerationRequest) -> str:
        if self.prompt_style == "completion":
            return str(request.prompt)
        tokenizer: Any = self._engine.get_tokenizer()
        if inspect.isawaitable(tokenizer):
            tokenizer = await tokenizer
        return str(tokenizer.apply_chat_template(request.prompt, tokenize=False, add_generation_prompt=True))

    async def _outputs(self, request: GenerationRequest, info: dict[str, Any]) -> AsyncIterator[str]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            max_tokens=request.max_tokens,
            temperature=self.temperature if request.temperature is None else request.temperature,
            stop=request.stop or None,
            output_kind=RequestOutputKind.DELTA,
        )
        request_id = uuid.uuid4().hex
        finished = False
        try:
            async for output in self._engine.generate(await self._prompt(request), params, request_id):
                info["prompt_tokens"] = len(output.prompt_token_ids or [])
                for completion in output.outputs:
                    info["completion_tokens"] = info.get("completion_tokens", 0) + len(completion.token_ids)
                    info["finish_reason"] = completion.finish_reason
                    if completion.text:
                        yield completion.text
                finished = output.finished
        finally:
            if not finished:  # the consumer went away: free the sequence's KV blocks now
                await self._engine.abort(request_id)

    async def stream(self, request: GenerationRequest, summary: Generation | None = None) -> AsyncIterator[str]:
        """The answer's pieces; at the end ``summary`` holds the token counts and finish reason."""
        info: dict[str, Any] = {}
        async for piece in self._outputs(request, info):
            yield piece
        if summary is not None:
            summary.prompt_tokens, summary.completion_tokens = info.get("prompt_tokens"), info.get("completion_tokens")
            summary.finish_reason = info.get("finish_reason")

    async def generate(self, request: GenerationRequest) -> Generation:
        info: dict[str, Any] = {}
        text = "".join([piece async for piece in self._outputs(request, info)])
        return Generation(text, info.get("prompt_tokens"), info.get("completion_tokens"), info.get("finish_reason"))

    async def aclose(self) -> None:
        self._engine.shutdown()
