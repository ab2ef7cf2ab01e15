"""Horse's YAML configuration, shipped inside the installed distribution (a wheel carries these
files as package data): `defaults.yaml`, the model presets in `models/`, the demo's settings
(`demo.yaml`) and its brief (`campaigns/`). Data only; code finds the files through CONFIG_DIR,
the same way from a source tree and from an installed wheel."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
