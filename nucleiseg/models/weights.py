"""Find and load ImageNet weights for the smp encoders, online or air-gapped.

Lookup order, first hit wins: ``weights_dir`` (smp-hub ``model.safetensors`` layouts or the torchvision
``.pth`` file), the Hugging Face cache, the torch-hub cache, then a download the normal
segmentation-models-pytorch way (Hugging Face Hub, falling back to the torchvision URL). Before downloading,
the host is probed once with a short timeout: offline, the run fails within seconds with the file names to
fetch and where to put them, instead of a chain of retries.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import torch

from nucleiseg.util.errors import NucleisegError

HUB_HOST = "huggingface.co"
PROBE_TIMEOUT_S = 3.0


class WeightsNotFoundError(NucleisegError):
    """Pretrained weights were asked for and cannot be found or downloaded."""


def _settings(encoder: str) -> tuple[str, str, str]:
    """``(hub repo id, hub revision, torchvision url)`` of the ImageNet weights of ``encoder``."""
    # (imported here: segmentation_models_pytorch brings timm and torchvision, which the plain U-Nets never need)
    from segmentation_models_pytorch.encoders import encoders as smp_encoders
    from segmentation_models_pytorch.encoders._legacy_pretrained_settings import pretrained_settings

    hub = smp_encoders[encoder]["pretrained_settings"]["imagenet"]
    url = pretrained_settings.get(encoder, {}).get("imagenet", {}).get("url", "")
    return hub["repo_id"], hub.get("revision"), url


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any decoding failure is reported with the file name
        raise WeightsNotFoundError(
            f"{path}: cannot read weights ({error}); expected a .pth state dict or .safetensors file"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsNotFoundError(f"{path}: holds a {type(state).__name__}, expected a state dict")
    return state


def candidate_files(encoder: str, weights_dir: Path) -> list[Path]:
    """Files in ``weights_dir`` accepted as ImageNet weights for ``encoder``, most specific first."""
    repo_id, _, url = _settings(encoder)
    names = [
        weights_dir / repo_id.split("/")[-1] / "model.safetensors",  # smp-hub snapshot: densenet121.imagenet/
        weights_dir / f"{encoder}.imagenet.safetensors",
        weights_dir / f"{encoder}.safetensors",
    ]
    if url:
        names.append(weights_dir / Path(urlparse(url).path).name)  # torchvision: resnet50-19c8e357.pth
    names += sorted(weights_dir.glob(f"{encoder}-*.pth")) + [weights_dir / f"{encoder}.pth"]
    return names


def _cached(encoder: str) -> Path | None:
    repo_id, revision, url = _settings(encoder)
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "model.safetensors", revision=revision)
        if isinstance(hit, str):
            return Path(hit)
    except ImportError:  # pragma: no cover - huggingface_hub comes with smp
        pass
    if url:
        hub_file = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
        if hub_file.is_file():
            return hub_file
    return None


def _host_reachable(host: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    from nucleiseg.util.network import host_reachable

    return host_reachable(host, 443, timeout)


def _download(encoder: str) -> dict[str, torch.Tensor]:
    repo_id, revision, url = _settings(encoder)
    from huggingface_hub import hf_hub_download

    try:
        return _read_state_dict(Path(hf_hub_download(repo_id, "model.safetensors", revision=revision)))
    except Exception:  # noqa: BLE001 - the hub is blocked in some countries; smp falls back to the URL too
        if not url:
            raise
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True)


def _local_weights(encoder: str, weights_dir: str | Path | None) -> Path | None:
    """The first local file holding ``encoder``'s ImageNet weights: ``weights_dir``, then the caches."""
    if weights_dir is not None:
        weights_dir = Path(weights_dir).expanduser()
        if not weights_dir.is_dir():
            raise WeightsNotFoundError(f"model.weights_dir={weights_dir}: folder not found")
        for path in candidate_files(encoder, weights_dir):
            if path.is_file():
                return path
    return _cached(encoder)


def _missing(encoder: str, weights_dir: str | Path | None) -> WeightsNotFoundError:
    repo_id, _, url = _settings(encoder)
    folder = str(weights_dir) if weights_dir else "WEIGHTS_DIR"
    alternative = f", or the original file {url} under its own name" if url else ""
    then = "" if weights_dir else f", then run with model.weights_dir={folder} (or set NUCLEISEG_WEIGHTS={folder})"
    return WeightsNotFoundError(
        f"ImageNet weights for encoder '{encoder}' are not on this machine and {HUB_HOST} is not reachable. "
        f"Download https://{HUB_HOST}/{repo_id}/resolve/main/model.safetensors and save it as "
        f"{folder}/{encoder}.imagenet.safetensors{alternative}{then}; or run with pretrained=false."
    )


def check_imagenet_weights(encoder: str, weights_dir: str | Path | None = None) -> None:
    """Fail now (seconds) when the weights are neither on disk nor downloadable, before any other work."""
    if _local_weights(encoder, weights_dir) is None and not _host_reachable(HUB_HOST):
        raise _missing(encoder, weights_dir)


def imagenet_state_dict(
    encoder: str, weights_dir: str | Path | None = None, allow_download: bool = True
) -> tuple[dict[str, torch.Tensor], str]:
    """Return ``(state_dict, where it came from)`` for the ImageNet weights of smp ``encoder``."""
    local = _local_weights(encoder, weights_dir)
    if local is not None:
        return _read_state_dict(local), str(local)
    if allow_download and _host_reachable(HUB_HOST):
        return _download(encoder), f"https://{HUB_HOST}/{_settings(encoder)[0]}"
    raise _missing(encoder, weights_dir)
