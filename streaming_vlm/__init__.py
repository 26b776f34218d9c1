"""StreamingVLM: real-time commentary on endless video streams with Qwen2.5-VL.

Importing this package does no work: no model, device or file is touched until called.
"""

__version__ = "0.1.0"
