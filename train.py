"""Train SaMam: `python train.py experiment=demo` (see conf/ and README)."""

import sys

import hydra
from omegaconf import DictConfig

import samam.resolvers  # registers the ${samam.*:...} resolvers the configs use


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> dict[str, float]:
    from samam.train import main as train_main

    return train_main(cfg)


if __name__ == "__main__":
    samam.resolvers.check_launcher_installed(sys.argv[1:])
    main()
