"""Generate the Python stubs in recsys/v1 from protos/recsys/v1/*.proto.

`python -m recsys.protogen` rewrites recsys/v1; `generate(out_dir)` writes them elsewhere
(the freshness test compares the two).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "recsys" / "v1").glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Run protoc over every proto; returns the files written under `out_dir`."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    return sorted((out_dir / "recsys" / "v1").glob("*_pb2*"))


def main() -> int:
    written = generate(ROOT)
    for path in written:
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
