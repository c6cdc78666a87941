"""Is a run the paper's protocol? The keys that define it, and how a configuration differs from it.

The defaults of ``conf/`` are the paper's protocol (each number beside the section it comes from), so the
reference is the default configuration itself, composed, never a second copy of its numbers. A study whose runs
differ (synthetic data, fewer epochs, another image size, the distance head ...) is reported without the
published values beside it: the comparison would not mean what it seems to.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from nucleiseg.config.plain import plain

# What the paper fixes (section III); the split seed is not among them (the paper does not say which 25 TNBC
# images it held out, so every data.protocol.seed is one reading of its protocol).
PROTOCOL_KEYS = (
    "data.name",
    "data.protocol.split",
    "data.protocol.test_dataset",
    "data.protocol.n_test",
    "data.protocol.image_size",
    "data.protocol.augment",
    "data.protocol.include_originals",
    "data.stain.method",
    "data.online_augment.enabled",
    "trainer.max_epochs",
    "data.loader.batch_size",
    "optimizer._target_",
    "optimizer.lr",
    "scheduler",
    "loss.smooth",
    "threshold",
    "model._target_",
    "loss._target_",
    "model.head",
    "model.unet_widths",
    "test_checkpoint",
)


def differences_from_paper(cfg: DictConfig, reference: DictConfig | None = None) -> list[str]:
    """``["trainer.max_epochs=3 (paper: 20)", ...]``; empty when ``cfg`` follows the paper's protocol."""
    if reference is None:
        from nucleiseg.config.settings import shipped_config  # composed once per process, inside a Hydra app too

        reference = shipped_config()
    found = []
    for key in PROTOCOL_KEYS:
        ours, paper = plain(OmegaConf.select(cfg, key)), plain(OmegaConf.select(reference, key))
        if ours != paper:
            found.append(f"{key}={ours} (paper: {paper})")
    ours, paper = _callbacks(cfg), _callbacks(reference)
    if ours != paper:  # an added EarlyStopping changes training; another checkpoint interval does not
        found.append(f"callbacks={sorted(ours.items())} (paper: {sorted(paper.items())})")
    return found


def _callbacks(cfg: DictConfig) -> dict[str, str]:
    """Each Lightning callback of ``cfg`` by name: its ``_target_``."""
    nodes = cfg.get("callbacks") or {}
    return {str(name): str(node.get("_target_")) for name, node in nodes.items() if node is not None}
