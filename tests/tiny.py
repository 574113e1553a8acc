"""The test-size network: conf/model/tiny.yaml's overrides, so tests and the demo share one
definition. Importable from any test (pytest puts tests/ on sys.path, see pyproject.toml)."""

from pathlib import Path

import yaml

_PRESET = Path(__file__).resolve().parents[1] / "conf" / "model" / "tiny.yaml"

# SaMam keyword arguments; everything else keeps the released default.
TINY: dict = {k: v for k, v in yaml.safe_load(_PRESET.read_text()).items() if k != "defaults"}
