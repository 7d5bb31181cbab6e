"""`editx doctor`: what is installed, which devices exist, which engines are ready."""

from __future__ import annotations

import platform
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

from editx_cli import engine as engines

PACKAGES = (
    "click", "numpy", "pandas", "soundfile", "soxr", "diskcache", "tqdm", "torch", "transformers",
    "funasr", "onnxruntime", "onnxruntime-gpu", "openai-whisper", "faster-whisper", "pedalboard", "librosa",
    "noisereduce", "silero-vad",
)


def report(names: list[str] | None, echo: Callable[[str], None], config: dict | None = None) -> bool:
    """Print the checks; return whether every engine asked for is ready (none asked for: whether
    any is, so a machine that runs only dsp is healthy)."""
    echo(f"python     {platform.python_version()} ({platform.machine()})")
    for pkg in PACKAGES:
        try:
            echo(f"{pkg:<15}{version(pkg)}")
        except PackageNotFoundError:
            if pkg != "onnxruntime-gpu":
                echo(f"{pkg:<15}not installed")
    echo("devices:")
    for line in _devices():
        echo(f"  {line}")
    ready: dict[str, bool] = {}
    for name in names or engines.names():
        if name not in engines.names():
            echo(f"engine {name}: unknown (known: {', '.join(engines.names())})")
            ready[name] = False
            continue
        cls = engines.get(name)
        problems = cls.check_config(config or {})
        if not problems:
            problems = cls.check_code(config or {})
        kinds = ", ".join(sorted(cls.task_kinds))
        edits = ", ".join(sorted(cls.edit_types))
        echo(f"engine {name}: {'ready' if not problems else 'NOT READY'} (tasks: {kinds}; edits: {edits})")
        for p in problems:
            echo(f"  - {p}")
        ready[name] = not problems
    return all(ready.values()) if names else any(ready.values())


def _devices() -> list[str]:
    lines = []
    try:
        import torch

        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                lines.append(f"cuda:{i} {p.name} ({p.total_memory / 2**30:.0f} GiB)")
        else:
            lines.append("no CUDA device (torch " + torch.__version__ + "); engines run on the CPU")
    except ImportError:
        lines.append("torch not installed")
    try:
        import onnxruntime

        lines.append("onnxruntime providers: " + ", ".join(onnxruntime.get_available_providers()))
    except ImportError:
        lines.append("onnxruntime not installed")
    return lines
