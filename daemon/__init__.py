"""The process: the CLI, the job runner, signals, logs."""

import os

# polars allocates through jemalloc, which by default keeps freed pages for
# 10 s before returning them. A run frees a batch's buffers every few
# milliseconds, so that cache held 20-40 MB of a 1M-row run's peak RSS.
# Returning them at once (0 ms) cost 1.4 s of system time per 1M rows (27 s
# at 10M) in madvise calls; a quarter of a second keeps most of the memory
# gain for a third of that. Set before polars loads (jemalloc reads it at
# its first allocation); an operator's own setting wins. One arena instead of
# jemalloc's four per CPU: the threads (parser, sinks, polars' pool) no longer
# each keep freed pages of their own, -5 to -14 MB peak RSS per 1M rows at the
# same CPU (each thread still has its own cache in front of the arena).
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:250,muzzy_decay_ms:0,narenas:1")

# Arrow allocates from the C library's malloc, not its default mimalloc pool:
# mimalloc kept the buffers of large objects, +15 to +30 MB peak RSS for 1M
# dense rows (16 MiB raw-event objects) at the same CPU. Arrow reads the
# variable once, at its first allocation (pa.set_memory_pool would not reach
# the Parquet writer's C++ code); an operator's own setting wins.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
