"""Developer tooling kept apart from the runtime library.

- ``s3server``: a local S3-compatible server (SeaweedFS) for tests and trying m2l-ray;
- ``model``: the one-time conversion of the shipped GGUF into the local default model.

Nothing in a job's runtime path imports these, except ``model_cache.resolve_model``,
which converts the local default model on first use.
"""
