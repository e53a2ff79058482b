"""`accelerate launch -m draftheads.train RECIPE [key=value ...]`: one training process."""

from __future__ import annotations

import sys

from draftheads.scripts.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "--in-process", *sys.argv[1:]]))
