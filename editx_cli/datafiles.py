"""Model-folder files read as data: bounded in size, YAML without alias bombs, no code.

A model folder may come from anywhere (a shared mount, a download); reading one
must never run code or exhaust memory. YAML aliases can expand exponentially
("billion laughs"), so they are counted before parsing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MAX_CONFIG_BYTES = 1 << 20  # config files are a few kB; anything larger is refused unread
MAX_YAML_ALIASES = 64
# Keys that make a loader import Python from the folder (FunASR's AutoModel honours both).
CODE_KEYS = ("trust_remote_code", "remote_code")


class UnsafeFile(ValueError):
    pass


def read_text(path: Path, limit: int = MAX_CONFIG_BYTES) -> str:
    try:
        size = path.stat().st_size
        if size > limit:
            raise UnsafeFile(f"{path}: {size} bytes, more than a config file has ({limit}); refused")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UnsafeFile(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise UnsafeFile(f"{path}: {e.strerror or e}") from None


def check_yaml_aliases(text: str, where: str, limit: int = MAX_YAML_ALIASES) -> None:
    import yaml

    try:
        aliases = sum(isinstance(t, yaml.AliasToken) for t in yaml.scan(text))
    except yaml.YAMLError as e:
        raise UnsafeFile(f"{where}: not valid YAML ({str(e).splitlines()[0]})") from None
    if aliases > limit:
        raise UnsafeFile(f"{where}: {aliases} YAML aliases (more than {limit}); refused as a possible alias bomb")


def load_yaml(path: Path) -> Any:
    """Plain YAML (no tags beyond the standard ones) from a model folder."""
    import yaml

    text = read_text(path)
    check_yaml_aliases(text, str(path))
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UnsafeFile(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None


def load_json(path: Path) -> Any:
    try:
        return json.loads(read_text(path))
    except ValueError as e:
        raise UnsafeFile(f"{path}: not valid JSON ({e})") from None


def refuse_code(config: Any, where: str) -> None:
    """Refuse a config that asks its loader to run Python code from the folder."""
    def walk(node: Any, trail: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in CODE_KEYS and value not in (None, False, "", "false", "False"):
                    raise UnsafeFile(f"{where}: '{trail}{key}: {value}' asks to run Python code from the model "
                                     "folder; editx never runs code from a model folder")
                walk(value, f"{trail}{key}.")
        elif isinstance(node, list):
            for item in node:
                walk(item, trail)

    walk(config, "")
