import sys

from fastood.cli import main

sys.exit(main())
