"""Stylise images with a trained (or released) SaMam checkpoint.

python stylize.py ckpt_path=… content=… style=… output_dir=… [alpha=0.7] [style_weights=[0.7,0.3]]
``content``/``style``: an image file or a folder; options in conf/stylize.yaml.
Logic: :func:`samam.evaluation.stylize`.
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

import samam.resolvers  # noqa: F401  registers ${samam.expanduser:...} (hydra.run.dir)


@hydra.main(version_base="1.3", config_path="conf", config_name="stylize")
def main(cfg: DictConfig) -> dict[str, Any]:
    # Every unset ??? at once, before the slow imports (OmegaConf named only the first, after them)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ValueError(
            f"stylize.py needs {', '.join(missing)}: python stylize.py ckpt_path=ckpts/samam.ckpt content=photos/ style=art/"
        )
    from samam.evaluation import stylize

    summary = stylize(**OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
    if not summary["written"] and not summary["skipped_existing"]:  # a script must see the failure
        raise SystemExit("stylize: nothing written: every content image was skipped (see the warnings above)")
    return summary


if __name__ == "__main__":
    main()
