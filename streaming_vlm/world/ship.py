"""Copy a trained demo checkpoint into the package (``streaming_vlm/assets/demo_model``), only what loading needs.

``python -m streaming_vlm.world.ship CHECKPOINT [DEST]`` (``scripts/train_demo.sh`` runs it with ``SHIP=1``).
Optimizer states, trainer logs and intermediate checkpoints are left behind; the shipped directory loads with
``from_pretrained`` and ``streaming-vlm infer --model DEST``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from streaming_vlm.settings import CHECKPOINT_FILE

FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "preprocessor_config.json", CHECKPOINT_FILE)
MAX_MB = 20


def ship(checkpoint: str | Path, dest: str | Path) -> Path:
    src, dest = Path(checkpoint), Path(dest)
    missing = [name for name in FILES if not (src / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{src}: not a complete demo checkpoint (missing {', '.join(missing)})")
    size_mb = sum((src / name).stat().st_size for name in FILES) / 2**20
    if size_mb > MAX_MB:
        raise ValueError(f"{src}: {size_mb:.1f} MB is over the {MAX_MB} MB the package may carry")
    tmp = dest.with_name(dest.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in FILES:
        shutil.copy2(src / name, tmp / name)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not 1 <= len(argv) <= 2:
        print("usage: python -m streaming_vlm.world.ship CHECKPOINT [DEST]", file=sys.stderr)
        return 2
    dest = argv[1] if len(argv) == 2 else Path(__file__).parents[1] / "assets" / "demo_model"
    try:
        out = ship(argv[0], dest)
    except (OSError, ValueError) as exc:
        print(f"streaming-vlm: error: {exc}", file=sys.stderr)
        return 2
    print(f"shipped {argv[0]} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
