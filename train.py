"""Train the paper's models: ``python train.py [-m] [overrides]`` (see README.md and conf/config.yaml)."""

import hydra
from omegaconf import DictConfig

from nucleiseg.parallel import register_resolvers

register_resolvers()  # ${nucleiseg_parallel_jobs:} in conf/hydra/launcher/local_parallel.yaml


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    from nucleiseg.train import main as train_main  # deferred: `python train.py --help` stays instant

    return train_main(cfg)


if __name__ == "__main__":
    main()
