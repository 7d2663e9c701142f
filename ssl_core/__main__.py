import sys

from ssl_core.cli import main

sys.exit(main())
