"""recsys: the shared, torch-free package (stubs, schema, artifact, errors, server builder, CLI)."""

__version__ = "0.1.0"
