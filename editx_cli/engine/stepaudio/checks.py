"""The stepaudio engine's settings and folders checked before anything loads (`editx doctor`
and every run), and its vocoder's code (`editx doctor`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from editx_cli.engine.stepaudio.layout import VOCODER_SUBDIR, llm_dir, problems


def folder(value: Any) -> Path | None:
    return Path(value).expanduser().resolve() if value else None


def config_problems(config: dict[str, Any]) -> list[str]:
    """What is wrong with these settings and folders, before anything loads."""
    official = (config.get("vocoder") or "native") == "official"
    out = problems(folder(config.get("model_dir")), folder(config.get("tokenizer_dir")),
                   folder(config.get("editx_src")), config.get("variant") or "base",
                   config.get("llm_impl") or "native", needs_src=official)
    if official and (config.get("vocoder_dtype") or "float32") != "float32":
        out.append("--vocoder official runs in float32 only (--vocoder-dtype is for editx's own vocoder)")
    if (config.get("variant") == "awq") and (config.get("llm_impl") or "native") == "native":
        out.append("--variant awq needs --llm-impl remote (its packed weights load through transformers)")
    if config.get("deterministic") and (config.get("dtype") or "auto") not in ("auto", "float32"):
        out.append(f"--deterministic decodes in float32; it cannot be combined with --dtype {config['dtype']}")
    if config.get("prompt_format") == "chat" and not out:
        from editx_cli.datafiles import UnsafeFile, load_json
        from editx_cli.engine.stepaudio.text_tokenizer import chat_template_of

        path = llm_dir(folder(config["model_dir"]), config.get("variant") or "base") / "tokenizer_config.json"
        try:
            found = path.exists() and chat_template_of(load_json(path).get("chat_template"))
        except (UnsafeFile, AttributeError) as e:
            found, out = False, [*out, str(e)]
        if not found:
            out.append(f"{path}: no chat_template, so --prompt-format chat cannot be used (the folder is a "
                       "release before 2026: use auto or legacy)")
    if config.get("deterministic") and config.get("variant") in ("bnb", "awq"):
        out.append(f"--deterministic decodes in float32; the {config['variant']} variant's 4-bit weights "
                   "cannot be")
    return out

def code_problems(config: dict[str, Any]) -> list[str]:
    """editx's own vocoder: cosyvoice.yaml's values make a model it can build. The official
    one: every module cosyvoice.yaml names imports from the source checkout, and any
    package it needs that is missing is named."""
    import importlib
    import sys

    model_dir, src = folder(config.get("model_dir")), folder(config.get("editx_src"))
    folder_of_llm = llm_dir(model_dir, config.get("variant") or "base")
    yaml_path = folder_of_llm / VOCODER_SUBDIR / "cosyvoice.yaml"
    if (config.get("vocoder") or "native") == "native":
        from editx_cli.engine.stepaudio.token2wav import read_config
        from editx_cli.engine.stepaudio.vocoder import UnsafeConfig

        try:
            read_config(yaml_path)
        except UnsafeConfig as e:
            return [str(e)]
        return []
    try:
        text = yaml_path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        return [f"{yaml_path}: {e.strerror}"]
    modules = sorted({m.rsplit(".", 1)[0] for m in re.findall(r"!(?:new|name):(stepvocoder\.[\w.]+)", text)})
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))
    out = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            missing = (e.name or "?").split(".")[0]
            if missing == "stepvocoder":
                out.append(f"{src}: cannot import {module}")
            else:
                out.append(f"the vocoder code ({module}) needs the {missing!r} package, which is not "
                           f"installed (pip install {missing})")
        except Exception as e:  # a broken checkout: name it, do not crash the doctor
            out.append(f"{src}: importing {module} failed: {type(e).__name__}: {e}")
    return out
