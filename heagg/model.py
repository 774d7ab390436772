"""The models a consortium trains, their flat parameter vector, and the exported model file.

What travels between sites is one flat float64 vector: every tensor of ``model.state_dict()``, in that order,
raveled (``flatten``/``load_flat``). The parameters are float32, so flattening is exact and reversible.

An exported model is two files side by side: ``NAME.pt`` with the ``state_dict`` (``torch.save``; read back with
``weights_only=True`` so loading a model file cannot run code) and ``NAME.json``, the model card: the spec, a format
version, and whatever the caller records (features, standardisation, metrics, rounds, sites, privacy settings).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from heagg.errors import UsageError

if TYPE_CHECKING:
    from heagg.standardize import Standardizer

MODEL_KINDS = ("logreg", "mlp")
CARD_FORMAT = "heagg-model-card"
CARD_FORMAT_VERSION = 1
_RESERVED_CARD_KEYS = frozenset({"format", "format_version", "spec"})


@dataclass(frozen=True)
class ModelSpec:
    """Which model: ``"logreg"`` (one linear layer to a logit) or ``"mlp"`` (Linear/ReLU layers of widths ``hidden``).

    ``hidden`` means nothing for logistic regression and is normalised to ``()`` there, so equal models compare equal.
    """

    kind: str
    n_features: int
    hidden: tuple[int, ...] = (16,)

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise UsageError(f"unknown model kind {self.kind!r}; choose one of {', '.join(MODEL_KINDS)}")
        if not _is_count(self.n_features):
            raise UsageError(f"n_features must be a positive integer, got {self.n_features!r}")
        hidden = tuple(self.hidden) if self.kind == "mlp" else ()
        if self.kind == "mlp" and (not hidden or not all(_is_count(h) for h in hidden)):
            raise UsageError(f"an mlp needs one or more positive hidden widths, got {self.hidden!r}")
        object.__setattr__(self, "hidden", hidden)

    def layer_widths(self) -> tuple[int, ...]:
        """Input width, hidden widths, output width (1 logit)."""
        return (self.n_features, *self.hidden, 1)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "n_features": self.n_features, "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, data: Any) -> ModelSpec:
        if not isinstance(data, dict) or not {"kind", "n_features"} <= set(data) <= {"kind", "n_features", "hidden"}:
            raise UsageError("a model spec must be a mapping with keys 'kind', 'n_features' and optionally 'hidden'")
        hidden = data.get("hidden", (16,))
        if not isinstance(hidden, (list, tuple)):
            raise UsageError(f"model spec 'hidden' must be a list of widths, got {hidden!r}")
        return cls(data["kind"], data["n_features"], tuple(hidden))


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def param_count(spec: ModelSpec) -> int:
    """Length of the flat parameter vector of a model built from ``spec``."""
    widths = spec.layer_widths()
    return sum((w_in + 1) * w_out for w_in, w_out in itertools.pairwise(widths))


def build_model(spec: ModelSpec, *, seed: int) -> nn.Sequential:
    """A fresh model with PyTorch's default Linear initialisation, drawn from a private generator seeded by ``seed``.

    The layers are created uninitialised (``skip_init``) so building a model never touches torch's global RNG.
    """
    generator = torch.Generator().manual_seed(seed)
    widths = spec.layer_widths()
    layers: list[nn.Module] = []
    for i, (w_in, w_out) in enumerate(itertools.pairwise(widths)):
        linear = nn.utils.skip_init(nn.Linear, w_in, w_out)
        bound = 1.0 / math.sqrt(w_in)  # what nn.Linear.reset_parameters draws from, for weight and bias alike
        with torch.no_grad():
            linear.weight.uniform_(-bound, bound, generator=generator)
            linear.bias.uniform_(-bound, bound, generator=generator)
        layers.append(linear)
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def flatten(model: nn.Module) -> np.ndarray:
    """All tensors of ``model.state_dict()``, in order, as one float64 vector."""
    tensors = [t.detach().reshape(-1).to(torch.float64) for t in model.state_dict().values()]
    return torch.cat(tensors).numpy() if tensors else np.zeros(0)


def load_flat(model: nn.Module, flat: np.ndarray) -> None:
    """Write a vector made by ``flatten`` back into ``model``, in place.

    Raises ``ValueError`` if the length is wrong or a value is not finite: a decryption that went wrong must not
    silently turn into a model full of NaN.
    """
    flat = np.asarray(flat, dtype=np.float64)
    state = model.state_dict()
    expected = sum(t.numel() for t in state.values())
    if flat.ndim != 1 or flat.size != expected:
        raise ValueError(f"flat parameter vector has shape {flat.shape}; this model needs {expected} values")
    if not np.isfinite(flat).all():
        raise ValueError("flat parameter vector holds NaN or infinite values")
    offset = 0
    with torch.no_grad():
        for tensor in state.values():  # state_dict tensors share storage with the parameters
            n = tensor.numel()
            tensor.copy_(torch.from_numpy(flat[offset : offset + n]).reshape(tensor.shape))
            offset += n


def predict_proba(model: nn.Module, X: np.ndarray, standardizer: Standardizer | None) -> np.ndarray:
    """Probability of malignancy (class 1) for each row of raw features ``X``, as float64.

    Pass ``standardizer=None`` when ``X`` is already standardised.
    """
    features = standardizer.transform(X) if standardizer is not None else np.asarray(X, dtype=np.float32)
    with torch.no_grad():
        logits = model(torch.tensor(features, dtype=torch.float32)).reshape(-1)  # copy: X may be read-only
    return torch.sigmoid(logits).to(torch.float64).numpy()


def card_path(path: str | Path) -> Path:
    """Where the model card of the weights file ``path`` lives."""
    return Path(path).with_suffix(".json")


def save_model(path: str | Path, model: nn.Module, spec: ModelSpec, card: dict[str, Any]) -> None:
    """Write the weights to ``path`` and the model card to ``path`` with suffix ``.json``, each atomically.

    ``card`` must be JSON-serialisable (numpy scalars and arrays are converted); NaN and infinities — an AUC
    on a one-class test set — are written as ``null`` so the card stays standard JSON.
    """
    path = Path(path)
    if path.suffix == ".json":
        raise UsageError(f"{path}: the weights file needs a suffix other than .json (that is the model card's)")
    reserved = _RESERVED_CARD_KEYS & set(card)
    if reserved:
        raise ValueError(f"model card keys {sorted(reserved)} are written by save_model itself")
    document = {"format": CARD_FORMAT, "format_version": CARD_FORMAT_VERSION, "spec": spec.to_dict(),
                **_jsonable(card)}
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    _write_atomically(path, lambda handle: torch.save(model.state_dict(), handle))
    _write_atomically(card_path(path), lambda handle: handle.write(text.encode("utf-8")))


def load_model(path: str | Path) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """Read a model written by ``save_model``: the model, its spec and the caller's card entries."""
    path = Path(path)
    card_file = card_path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such model file")
    if not card_file.is_file():
        raise UsageError(f"{card_file}: model card not found; it is written next to the weights by heagg")
    try:
        document = json.loads(card_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{card_file}: not a readable model card ({exc})") from exc
    if not isinstance(document, dict) or document.get("format") != CARD_FORMAT:
        raise UsageError(f"{card_file}: not a heagg model card")
    if document.get("format_version") != CARD_FORMAT_VERSION:
        raise UsageError(f"{card_file}: model card format version {document.get('format_version')!r} is not "
                         f"supported (this heagg reads version {CARD_FORMAT_VERSION})")
    spec = ModelSpec.from_dict(document.get("spec"))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (pickle, zip, runtime errors) for a garbled file
        raise UsageError(f"{path}: not a readable model weights file ({type(exc).__name__})") from exc
    model = build_model(spec, seed=0)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise UsageError(f"{path}: the weights do not match the model card's spec {spec.to_dict()}") from exc
    card = {k: v for k, v in document.items() if k not in _RESERVED_CARD_KEYS}
    return model, spec, card


def _write_atomically(path: Path, write: Callable[[Any], Any]) -> None:
    """Write through a temporary file in the same directory and rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(value: Any) -> Any:
    """``value`` with numpy types converted and non-finite floats replaced by ``None``."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
