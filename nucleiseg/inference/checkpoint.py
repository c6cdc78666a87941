"""Load a trained model from a checkpoint without executing pickled code.

``torch.load(weights_only=True)`` only rebuilds tensors and plain containers; the architecture is rebuilt from
the checkpoint's hyper-parameters by the one model factory, then the weights are loaded strictly.
"""

from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from nucleiseg.config.plain import plain
from nucleiseg.models.factory import SegmentationNet, create_model
from nucleiseg.postprocess.instances import RULES, Postprocess
from nucleiseg.util.errors import ConfigError, NucleisegError, first_line
from nucleiseg.util.writing import write_bytes_atomic

MODEL_CHECKPOINT_KEY = "nucleiseg_model_checkpoint"  # marks a finished run's weights-only checkpoint (format 1)


class CheckpointError(NucleisegError):
    """A checkpoint cannot be read or does not fit the architecture it names."""


SAFETENSORS_KEY = "nucleiseg"  # the hyper-parameters, as JSON, in a .safetensors file's metadata


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and hyper-parameters of a model written by :func:`write_safetensors`."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({first_line(error)})") from None
    if SAFETENSORS_KEY not in metadata:
        raise CheckpointError(
            f"{path}: safetensors without nucleiseg's metadata; expected a file `nucleiseg export` wrote"
        )
    try:
        hparams = json.loads(metadata[SAFETENSORS_KEY])
    except json.JSONDecodeError as error:
        raise CheckpointError(
            f"{path}: its {SAFETENSORS_KEY!r} metadata is not JSON ({error.msg} at character {error.pos}); expected "
            "the hyper-parameters `nucleiseg export` writes"
        ) from None
    if not isinstance(hparams, dict):
        raise CheckpointError(
            f"{path}: its {SAFETENSORS_KEY!r} metadata is a JSON {type(hparams).__name__}; expected a JSON object of "
            "hyper-parameters, as `nucleiseg export` writes"
        )
    return {f"model.{k}": v for k, v in state.items()}, hparams


def write_safetensors(path: str | Path, model: torch.nn.Module, hparams: Any) -> Path:
    """The weights as safetensors (no pickle: nothing in the file can run), hyper-parameters in its metadata."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {SAFETENSORS_KEY: json.dumps(plain(hparams), sort_keys=True)}
    write_bytes_atomic(path, save(state, metadata=metadata))
    return Path(path)


def load_checkpoint(path: str | Path) -> tuple[SegmentationNet, dict[str, Any]]:
    """Return ``(model in eval mode on CPU, hyper-parameters)`` from a nucleiseg checkpoint (``.ckpt``, loaded
    weights-only) or a ``.safetensors`` model."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        state_dict, hparams = _read_safetensors(path)
        return _build(path, state_dict, hparams)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - unpickling refusals and corrupt files alike
        raise CheckpointError(_refusal(path, error)) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise CheckpointError(f"{path}: not a nucleiseg training checkpoint (no state_dict/hyper_parameters)")
    return _build(path, checkpoint["state_dict"], dict(checkpoint["hyper_parameters"]))


def _refusal(path: Path, error: Exception) -> str:
    """One line saying why ``torch.load(weights_only=True)`` refused ``path``: code in it, or a damaged file."""
    text = str(error)
    if isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in text:
        names = sorted(set(re.findall(r"GLOBAL ([\w.]+)", text)))
        found = f": {', '.join(names)}" if names else ""
        return (
            f"{path}: the file holds code (pickled Python objects{found}), not only weights, so it was not loaded "
            "(nucleiseg runs no code from a model file): re-save it with weights only (tensors, and hyper-parameters "
            "as plain dicts, lists, numbers and strings), or export it with `nucleiseg export --format safetensors` "
            "from a checkpoint nucleiseg loads"
        )
    return (
        f"{path}: not a readable checkpoint ({type(error).__name__}: {first_line(error, 120)}): damaged or cut "
        "short, or not a model file; expected a .ckpt written by nucleiseg training or a .safetensors written by "
        "`nucleiseg export`"
    )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _refuser(path: Path) -> Any:
    def refuse(key: str, value: Any, expected: str) -> CheckpointError:
        return CheckpointError(f"{path}: hyper-parameter {key}={value!r:.80}: expected {expected}")

    return refuse


def _check_postprocess(path: Path, post: Any) -> None:
    """The post-processing a checkpoint carries, checked by :class:`Postprocess`'s own rules (keys this version does
    not know are a newer version's: left alone)."""
    if post is not None and not isinstance(post, dict):
        raise _refuser(path)("postprocess", post, "a mapping of post-processing parameters")
    known = {key: value for key, value in (post or {}).items() if key in RULES}
    try:
        Postprocess.check_values(known, prefix="postprocess")
    except ConfigError as error:
        raise CheckpointError(f"{path}: hyper-parameter {error}") from None


def check_hyperparameters(path: Path, hparams: dict[str, Any]) -> None:
    """Refuse, in one line naming ``path`` and the key, a value inference would use that is of the wrong type or out
    of range: ``threshold``, ``postprocess.*``, ``data.model_mpp``, ``unet_widths``. Keys nucleiseg does not know
    are left alone (a newer version's)."""

    refuse = _refuser(path)
    threshold = hparams.get("threshold")
    if threshold is not None and not (_number(threshold) and 0 < threshold < 1):
        raise refuse("threshold", threshold, "a probability between 0 and 1")
    _check_postprocess(path, hparams.get("postprocess"))
    data = hparams.get("data")
    if data is not None and not isinstance(data, dict):
        raise refuse("data", data, "a mapping (the training data's description)")
    mpp = (data or {}).get("model_mpp")
    if mpp is not None and not (_number(mpp) and mpp > 0):
        raise refuse("data.model_mpp", mpp, "a positive pixel size in micrometres")
    widths = hparams.get("unet_widths")
    if widths is not None and not (isinstance(widths, list | tuple) and all(_whole(w) and w > 0 for w in widths)):
        raise refuse("unet_widths", widths, "a list of positive channel counts")
    for key in ("encoder", "head"):
        if key in hparams and not isinstance(hparams[key], str):
            raise refuse(key, hparams[key], "a name")


def _build(path: Path, state_dict: dict[str, torch.Tensor], hparams: dict[str, Any]) -> tuple[SegmentationNet, dict]:
    if "encoder" not in hparams:
        raise CheckpointError(f"{path}: checkpoint hyper-parameters name no encoder; found {sorted(hparams)}")
    check_hyperparameters(path, hparams)
    try:  # weights come from the checkpoint, never from ImageNet again
        model = create_model(
            hparams["encoder"],
            pretrained=False,
            head=hparams.get("head", "binary"),
            unet_widths=hparams.get("unet_widths"),
            n_rays=hparams.get("n_rays"),
            n_types=len(hparams.get("types") or []),
        )
    except NucleisegError as error:
        raise CheckpointError(f"{path}: {error}") from None
    state = {k.removeprefix("model."): v for k, v in state_dict.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"{path}: weights do not fit encoder={hparams['encoder']} ({first_line(error)})"
        ) from None
    return model.eval(), hparams


def _save_atomic(payload: dict, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def write_model_checkpoint(path: str | Path, model: torch.nn.Module, hparams: Any) -> Path:
    """The checkpoint a finished run keeps: weights and hyper-parameters only (no optimizer state), in the
    layout :func:`load_checkpoint` reads (``state_dict`` keys ``model.*``, ``hyper_parameters``)."""
    path = Path(path)
    state = {f"model.{k}": v.detach().cpu().clone() for k, v in model.state_dict().items()}
    _save_atomic({"state_dict": state, "hyper_parameters": plain(hparams), MODEL_CHECKPOINT_KEY: 1}, path)
    return path


def update_hyperparameters(path: str | Path, updates: dict[str, Any]) -> dict[str, Any]:
    """Rewrite ``path`` (atomically) with ``updates`` merged into its hyper-parameters; return the previous
    values of the keys updated (so what was replaced can be recorded)."""
    path = Path(path)
    load_checkpoint(path)  # refuses unsafe or foreign files with a named error before anything is written
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    previous = {k: checkpoint["hyper_parameters"].get(k) for k in updates}
    checkpoint["hyper_parameters"] = {**checkpoint["hyper_parameters"], **plain(updates)}
    _save_atomic(checkpoint, path)
    return previous
