"""Generator backends. Built-ins register exactly the way an outside backend would."""

from .base import (
    Generation,
    GenerationRequest,
    Generator,
    available_generators,
    get_generator,
    register_generator,
)


def _llamacpp(settings):  # type: ignore[no-untyped-def]
    from .llamacpp import LlamaCppGenerator

    return LlamaCppGenerator.from_settings(settings)


def _extractive(settings):  # type: ignore[no-untyped-def]
    from .extractive import ExtractiveGenerator

    return ExtractiveGenerator()


def _instant(settings):  # type: ignore[no-untyped-def]
    from .instant import InstantGenerator

    return InstantGenerator()


def _vllm(settings):  # type: ignore[no-untyped-def]
    from .vllm import VLLMGenerator

    return VLLMGenerator.from_settings(settings)


def _vllm_engine(settings):  # type: ignore[no-untyped-def]
    from .vllm_engine import VLLMEngineGenerator

    return VLLMEngineGenerator.from_settings(settings)


register_generator("llamacpp", _llamacpp)
register_generator("vllm-engine", _vllm_engine)
register_generator("vllm", _vllm)
register_generator("extractive", _extractive)
register_generator("instant", _instant)

__all__ = [
    "Generation",
    "GenerationRequest",
    "Generator",
    "available_generators",
    "get_generator",
    "register_generator",
]
