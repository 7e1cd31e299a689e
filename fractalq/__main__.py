import sys

from fractalq.cli import main

sys.exit(main())
