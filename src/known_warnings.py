"""Narrow filters for library warnings a user cannot act on.

`src/__init__.py` installs them, so every entry point (stages, seed commands, benchmarks) has
them before transformers, peft or bitsandbytes load. Each filter names the exact message, its
category and the library module that raises it; anything else still shows.
"""

from __future__ import annotations

import logging
import warnings

# (category, message regex, raising module regex)
KNOWN_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    # peft's PeftModel.__init__ reads transformers' deprecated alias (our code uses the new API).
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated", r"transformers\.modeling_utils"),
    # A LoRA target that includes lm_head: peft saves the embedding layers, as it should.
    (UserWarning, r"Setting `save_embedding_layers` to `True` as embedding layers found",
     r"peft\.utils\.save_and_load"),
)
# (logger, message prefix): bitsandbytes logs at import, on CPUs with AVX512-BF16, that it could
# not fetch an optional fused CPU kernel from the hub; it falls back to its own kernel.
KNOWN_LOG_RECORDS: tuple[tuple[str, str], ...] = (
    ("bitsandbytes.backends.cpu.ops",
     "Failed to load CPU gemm_4bit_forward from kernels-community"),
)


class _DropPrefix(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def filter_known_warnings() -> None:
    """Install the filters above (idempotent)."""
    for category, message, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name, prefix in KNOWN_LOG_RECORDS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefix) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropPrefix(prefix))
