"""The StyleID evaluation protocol (SPEC §6) as a command.

python eval.py ckpt_path=… content_dir=… style_dir=… output_dir=…
Writes every ``{content}_stylized_{style}.png``, ``results.json`` and ``results.md``; options
in conf/eval.yaml. Logic: :func:`samam.evaluation.evaluate`.
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

import samam.resolvers  # noqa: F401  registers ${samam.expanduser:...} (hydra.run.dir)


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> dict[str, Any]:
    # Every unset ??? at once, before the slow imports (OmegaConf named only the first, after them)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ValueError(
            f"eval.py needs {', '.join(missing)}: python eval.py ckpt_path=ckpts/samam.ckpt content_dir=data/eval/content style_dir=data/eval/style"
        )
    from samam.evaluation import evaluate

    return evaluate(**OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))


if __name__ == "__main__":
    main()
