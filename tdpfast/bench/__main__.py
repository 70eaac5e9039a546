"""``python -m tdpfast.bench`` runs ``tdpfast bench``."""
import sys

from .cli import main

sys.exit(main())
