"""``python -m streaming_vlm.train --config configs/sft_stage1.yaml [--key value ...]`` (also under torchrun)."""

import sys

from streaming_vlm.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
