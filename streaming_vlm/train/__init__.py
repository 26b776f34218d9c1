"""Supervised fine-tuning: arguments (``args.py``), the Trainer and its setup (``trainer.py``), the entry point
(``cli.py``; ``python -m streaming_vlm.train`` or ``streaming-vlm train``). Data lives in ``streaming_vlm.data``.

Importing this package loads nothing heavy; import the submodules you need.
"""
