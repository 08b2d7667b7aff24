#!/usr/bin/env python
"""BLEU, PRR and OOD AUROC from edd_fairseq.generate outputs; see edd_fairseq/score.py for options."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from edd_fairseq.score import main  # noqa: E402

if __name__ == "__main__":
    main()
