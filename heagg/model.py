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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from heagg.errors import UsageError
from heagg.modelspec import MODEL_KINDS, ModelSpec, param_count

__all__ = [
    "MODEL_KINDS",
    "ModelSpec",
    "build_model",
    "flatten",
    "load_flat",
    "load_model",
    "param_count",
    "predict_proba",
    "save_model",
]

if TYPE_CHECKING:
    from heagg.standardize import Standardizer

CARD_FORMAT = "heagg-model-card"
CARD_FORMAT_VERSION = 1
_RESERVED_CARD_KEYS = frozenset({"format", "format_version", "spec"})


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
