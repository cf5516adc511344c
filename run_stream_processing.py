#!/usr/bin/env python3
"""Rivulet: reactive event-time stream processing.

    python run_stream_processing.py            # the bundled sample, local mode
    python run_stream_processing.py --help     # every command
"""

import sys

from daemon.cli import main

if __name__ == "__main__":
    sys.exit(main())
