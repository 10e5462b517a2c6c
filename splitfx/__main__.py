"""``python -m splitfx``: the command line (also what ``torchrun -m splitfx`` runs)."""
import sys

from .cli import main

sys.exit(main())
