"""Train the paper's models: ``python train.py [-m] [overrides]`` (see README.md and conf/config.yaml)."""

import sys
from typing import Any

import hydra
from omegaconf import DictConfig

from nucleiseg.util.parallel import register_resolvers

register_resolvers()  # ${nucleiseg_parallel_jobs:} in conf/hydra/launcher/local_parallel.yaml


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> Any:
    from nucleiseg.training.run import main as train_main  # deferred: `python train.py --help` stays instant

    return train_main(cfg)


def check_keys() -> None:
    """A misspelt key or a value that is not one of its choices fails here, in one line with the closest key or
    value, before torch is imported (Hydra would advise ``+key=`` for a misspelt key)."""
    overrides = [word for word in sys.argv[1:] if "=" in word and not word.startswith("-")]
    if overrides:
        from nucleiseg.config.checks import check_overrides
        from nucleiseg.config.compose import misspelt_keys

        problem = misspelt_keys(overrides) or check_overrides(overrides)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            raise SystemExit(2)


if __name__ == "__main__":
    check_keys()
    main()
