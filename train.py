"""Train SaMam: `python train.py experiment=demo` (see conf/ and README)."""

import hydra
from omegaconf import DictConfig

import samam.resolvers  # noqa: F401 (registers the ${samam.*:...} resolvers the configs use)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> dict[str, float]:
    from samam.train import main as train_main

    return train_main(cfg)


if __name__ == "__main__":
    main()
