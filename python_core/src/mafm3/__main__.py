import sys

from mafm3.cli import main

sys.exit(main())
