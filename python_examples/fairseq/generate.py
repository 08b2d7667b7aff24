#!/usr/bin/env python
"""fairseq-generate with token- and sequence-level uncertainties; see edd_fairseq/generate.py for options."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from edd_fairseq.generate import cli_main  # noqa: E402

if __name__ == "__main__":
    cli_main()
