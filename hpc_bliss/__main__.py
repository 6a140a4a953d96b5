import sys

from hpc_bliss.cli import main

sys.exit(main())
